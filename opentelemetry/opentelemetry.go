package opentelemetry

import (
	"context"
	"fmt"

	"github.com/grpcguard/grpcguard"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the metrics: the meter's name.
const ScopeName = "github.com/grpcguard/grpcguard/opentelemetry"

// Options configures what Hooks records. The zero value records nothing.
type Options struct {
	// MeterProvider receives the metrics (see the package documentation
	// for their names); nil: no metrics, and no metric hooks are set.
	MeterProvider metric.MeterProvider
	// TracerProvider turns the trace events on: each attempt, hedge and
	// decision of a call is added to the span of the call's context when it
	// is recording. grpcguard starts no span of its own (see the package
	// documentation for why), so give the provider the calls' spans come
	// from. nil: no trace events, and no trace hooks are set.
	TracerProvider trace.TracerProvider
	// Target is the grpc.target label of the per-call and per-connection
	// metrics, as gRFC A66 defines it: the canonical target of the
	// grpc.ClientConn the hooks are given to
	// (grpc.ClientConn.CanonicalTarget, such as "dns:///example.com:443").
	// Empty: the label is left off. One Hooks per client, then.
	Target string
}

// Hooks returns the hooks that record grpcguard's events into o's providers,
// for grpcguard.WithHooks. With neither provider set, every field is nil,
// and grpcguard does nothing more than without them. It fails when the
// MeterProvider refuses an instrument.
//
// The hooks are safe for concurrent use; one Hooks may serve several
// clients of one target.
func Hooks(o Options) (grpcguard.Hooks, error) {
	var h grpcguard.Hooks
	if o.MeterProvider != nil {
		m, err := newMetrics(o.MeterProvider, o.Target)
		if err != nil {
			return grpcguard.Hooks{}, fmt.Errorf("grpcguard/opentelemetry: %w", err)
		}
		h = m.hooks()
	}
	if o.TracerProvider != nil {
		t := traceHooks()
		h.OnAttempt, h.OnRetry, h.OnHedge = t.OnAttempt, t.OnRetry, t.OnHedge
		if count := h.OnNotResent; count != nil {
			h.OnNotResent = func(ctx context.Context, e grpcguard.NotResentEvent) {
				count(ctx, e)
				t.OnNotResent(ctx, e)
			}
		} else {
			h.OnNotResent = t.OnNotResent
		}
	}
	return h, nil
}

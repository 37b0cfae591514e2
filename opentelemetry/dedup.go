package opentelemetry

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/grpcguard/grpcguard/dedup"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

const (
	dedupOutcomesName    = "grpcguard.dedup.outcomes"
	dedupStoreErrorsName = "grpcguard.dedup.store_errors"

	outcomeKey  = attribute.Key("grpcguard.outcome")
	storeOpKey  = attribute.Key("grpcguard.store_op")
	failOpenKey = attribute.Key("grpcguard.fail_open")
)

// DedupHooks returns the hooks that record the server half's events into
// o.MeterProvider, for dedup.WithHooks:
//
//   - grpcguard.dedup.outcomes {call}, by grpc.method and grpcguard.outcome
//     (executed, answered, waited, conflict, refused, released: the
//     dedup.Outcome constants): what became of each call with a request id;
//   - grpcguard.dedup.store_errors {error}, by grpc.method,
//     grpcguard.store_op (claim, wait, finish, release) and
//     grpcguard.fail_open (the call ran without deduplication).
//
// grpc.method is the server's full method without its leading slash: a
// method the server registered (the interceptor sees no other), so the
// label is bounded by the server's services. Options.TracerProvider and
// Target do not apply. Without a MeterProvider every field is nil.
func DedupHooks(o Options) (dedup.Hooks, error) {
	if o.MeterProvider == nil {
		return dedup.Hooks{}, nil
	}
	meter := o.MeterProvider.Meter(ScopeName)
	outcomes, err1 := meter.Int64Counter(dedupOutcomesName, metric.WithUnit("{call}"),
		metric.WithDescription("What became of calls with a request id at a deduplicating server."))
	storeErrors, err2 := meter.Int64Counter(dedupStoreErrorsName, metric.WithUnit("{error}"),
		metric.WithDescription("Failed operations of the deduplicating server's store."))
	if err := errors.Join(err1, err2); err != nil {
		return dedup.Hooks{}, fmt.Errorf("grpcguard/opentelemetry: %w", err)
	}
	var sets sync.Map // attribute key → metric.MeasurementOption, made once each
	with := func(key any, kv ...attribute.KeyValue) metric.MeasurementOption {
		if o, ok := sets.Load(key); ok {
			return o.(metric.MeasurementOption)
		}
		o, _ := sets.LoadOrStore(key, metric.WithAttributeSet(attribute.NewSet(kv...)))
		return o.(metric.MeasurementOption)
	}
	type outcomeKeyT struct{ method, outcome string }
	type storeErrKeyT struct {
		method, op string
		failOpen   bool
	}
	return dedup.Hooks{
		OnOutcome: func(ctx context.Context, e dedup.OutcomeEvent) {
			outcomes.Add(ctx, 1, with(outcomeKeyT{e.Method, e.Outcome},
				methodKey.String(a66Method(e.Method)), outcomeKey.String(e.Outcome)))
		},
		OnStoreError: func(ctx context.Context, e dedup.StoreErrorEvent) {
			storeErrors.Add(ctx, 1, with(storeErrKeyT{e.Method, e.Op, e.FailOpen},
				methodKey.String(a66Method(e.Method)), storeOpKey.String(e.Op), failOpenKey.Bool(e.FailOpen)))
		},
	}, nil
}

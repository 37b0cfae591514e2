package opentelemetry_test

import (
	"context"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/opentelemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	grpcotelx "google.golang.org/grpc/experimental/opentelemetry"
	grpcotel "google.golang.org/grpc/stats/opentelemetry"
)

// grpcOTel is grpc-go's own OpenTelemetry instrumentation, metrics and
// traces, into mp and tp.
func grpcOTel(mp *sdkmetric.MeterProvider, tp trace.TracerProvider) grpc.DialOption {
	return grpcotel.DialOption(grpcotel.Options{
		MetricsOptions: grpcotel.MetricsOptions{MeterProvider: mp},
		TraceOptions:   grpcotelx.TraceOptions{TracerProvider: tp, TextMapPropagator: propagation.TraceContext{}},
	})
}

// newTracer returns a TracerProvider that records every span it ends.
func newTracer(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	return tp, rec
}

// grpcCalls returns how many calls and attempts grpc-go's instrumentation
// counted: grpc.client.call.duration's count and grpc.client.attempt.started.
func grpcCalls(t *testing.T, got map[string]metricdata.Metrics) (calls uint64, attempts int64) {
	t.Helper()
	d, ok := got["grpc.client.call.duration"].Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("grpc.client.call.duration not recorded; have %v", names(got))
	}
	for _, dp := range d.DataPoints {
		calls += dp.Count
	}
	s, ok := got["grpc.client.attempt.started"].Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("grpc.client.attempt.started not recorded; have %v", names(got))
	}
	for _, dp := range s.DataPoints {
		attempts += dp.Value
	}
	return calls, attempts
}

// TestOrderOneCallNAttempts: with grpc-go's OpenTelemetry option given before
// grpcguard's options, a call retried twice is one call of three attempts to
// grpc-go's metrics, and one "Sent." span with three "Attempt." spans under
// it, which carries grpcguard's attempts and decisions as events.
func TestOrderOneCallNAttempts(t *testing.T) {
	mp, reader := newMeter(t)
	tp, spans := newTracer(t)
	h, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, &healthServer{failFirst: 2}),
		[]grpc.DialOption{grpcOTel(mp, tp)}, nil,
		grpcguard.WithHooks(h), grpcguard.WithIdempotentMethods(check))
	if err := callCheck(t, context.Background(), cc); err != nil {
		t.Fatal(err)
	}

	if calls, attempts := grpcCalls(t, collect(t, reader)); calls != 1 || attempts != 3 {
		t.Errorf("grpc-go counted %d calls and %d attempts, want 1 call of 3 attempts", calls, attempts)
	}

	var call sdktrace.ReadOnlySpan
	var attempts []sdktrace.ReadOnlySpan
	waitFor(t, 5*time.Second, "the call span ended", func() bool {
		call, attempts = nil, nil
		for _, s := range spans.Ended() {
			switch s.Name() {
			case "Sent.grpc.health.v1.Health.Check":
				call = s
			case "Attempt.grpc.health.v1.Health.Check":
				attempts = append(attempts, s)
			}
		}
		return call != nil && len(attempts) == 3
	})
	for _, a := range attempts {
		if a.Parent().SpanID() != call.SpanContext().SpanID() {
			t.Errorf("attempt span %v has parent %v, want the call span %v", a.SpanContext().SpanID(), a.Parent().SpanID(), call.SpanContext().SpanID())
		}
	}
	var started []int64
	var decisions []string
	for _, e := range call.Events() {
		attrs := attribute.NewSet(e.Attributes...)
		switch e.Name {
		case "grpcguard.attempt":
			n, _ := attrs.Value("grpcguard.attempt")
			started = append(started, n.AsInt64())
		case "grpcguard.decision":
			d, _ := attrs.Value("grpcguard.decision")
			why, _ := attrs.Value("grpcguard.reason")
			decisions = append(decisions, d.AsString()+" "+why.AsString())
		}
	}
	if len(started) != 3 || started[0] != 1 || started[1] != 2 || started[2] != 3 {
		t.Errorf("attempt events %v, want 1 2 3", started)
	}
	if want := "resent " + grpcguard.ReasonIdempotent; len(decisions) != 2 || decisions[0] != want || decisions[1] != want {
		t.Errorf("decision events %q, want two %q", decisions, want)
	}
}

// TestOrderReversed: given after grpcguard's options, grpc-go's option sees
// each grpcguard attempt as a call of its own: the order the documentation
// warns against.
func TestOrderReversed(t *testing.T) {
	mp, reader := newMeter(t)
	cc := newClient(t, startServer(t, &healthServer{failFirst: 2}),
		nil, []grpc.DialOption{grpcOTel(mp, nil)},
		grpcguard.WithIdempotentMethods(check))
	if err := callCheck(t, context.Background(), cc); err != nil {
		t.Fatal(err)
	}
	if calls, attempts := grpcCalls(t, collect(t, reader)); calls != 3 || attempts != 3 {
		t.Errorf("grpc-go counted %d calls and %d attempts, want 3 calls of one attempt", calls, attempts)
	}
}

// TestTraceEventsOnCallersSpan: without grpc-go's tracing, the events go on
// the caller's own span; a hedge shows as an attempt with hedge set and a
// "hedged" decision. A context without a recording span gets nothing.
func TestTraceEventsOnCallersSpan(t *testing.T) {
	tp, spans := newTracer(t)
	h, err := opentelemetry.Hooks(opentelemetry.Options{TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, &healthServer{stallFirst: true}), nil, nil, grpcguard.WithHooks(h),
		grpcguard.WithIdempotentMethods(check), grpcguard.WithHedgeDelay(20*time.Millisecond))
	ctx, span := tp.Tracer("test").Start(context.Background(), "caller")
	if err := callCheck(t, ctx, cc); err != nil {
		t.Fatal(err)
	}
	span.End()
	if err := callCheck(t, context.Background(), cc); err != nil { // no span: nothing to add to
		t.Fatal(err)
	}

	ended := spans.Ended()
	if len(ended) != 1 || ended[0].Name() != "caller" {
		t.Fatalf("spans %v, want only the caller's", ended)
	}
	var hedgeAttempt, hedged bool
	for _, e := range ended[0].Events() {
		attrs := attribute.NewSet(e.Attributes...)
		n, _ := attrs.Value("grpcguard.attempt")
		if hv, _ := attrs.Value("grpcguard.hedge"); e.Name == "grpcguard.attempt" && hv.AsBool() && n.AsInt64() == 2 {
			hedgeAttempt = true
		}
		if d, _ := attrs.Value("grpcguard.decision"); e.Name == "grpcguard.decision" && d.AsString() == "hedged" && n.AsInt64() == 2 {
			hedged = true
		}
	}
	if !hedgeAttempt || !hedged {
		t.Errorf("events %+v, want attempt 2 as a hedge and a hedged decision", ended[0].Events())
	}
}

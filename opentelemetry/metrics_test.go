package opentelemetry_test

import (
	"context"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/opentelemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const target = "dns:///checks.example:443"

// wantCallLabels checks that a per-call data point carries A66's labels.
func wantCallLabels(t *testing.T, name string, attrs attribute.Set) {
	t.Helper()
	if v, _ := attrs.Value("grpc.method"); v.AsString() != checkLabel {
		t.Errorf("%s grpc.method = %q, want %q", name, v.AsString(), checkLabel)
	}
	if v, _ := attrs.Value("grpc.target"); v.AsString() != target {
		t.Errorf("%s grpc.target = %q, want %q", name, v.AsString(), target)
	}
}

// TestA96RetriedTwice: a call retried twice is one retries data point of 2
// and one retry_delay; a call that was not retried adds nothing, and no
// hedge is reported.
func TestA96RetriedTwice(t *testing.T) {
	mp, reader := newMeter(t)
	h, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp, Target: target})
	if err != nil {
		t.Fatal(err)
	}
	srv := &healthServer{failFirst: 2}
	cc := newClient(t, startServer(t, srv), nil, nil, grpcguard.WithHooks(h), grpcguard.WithIdempotentMethods(check))
	if err := callCheck(t, context.Background(), cc); err != nil {
		t.Fatal(err)
	}
	if n := srv.calls.Load(); n != 3 {
		t.Fatalf("server ran %d attempts, want 3", n)
	}
	if err := callCheck(t, context.Background(), cc); err != nil { // one attempt: nothing to report
		t.Fatal(err)
	}

	got := collect(t, reader)
	retries := histogram[int64](t, got, "grpc.client.call.retries")
	if retries.Count != 1 || retries.Sum != 2 {
		t.Errorf("retries: count %d sum %d, want one call with 2", retries.Count, retries.Sum)
	}
	wantCallLabels(t, "retries", retries.Attributes)
	if _, ok := got["grpc.client.call.hedges"]; ok {
		t.Errorf("hedges reported for a call with none: %+v", got["grpc.client.call.hedges"])
	}
	if _, ok := got["grpc.client.call.transparent_retries"]; ok {
		t.Error("transparent_retries reported: grpcguard cannot see them")
	}
	delay := histogram[float64](t, got, "grpc.client.call.retry_delay")
	if delay.Count != 1 || delay.Sum < 0 || delay.Sum > 10 {
		t.Errorf("retry_delay: count %d sum %v, want one call's wait", delay.Count, delay.Sum)
	}
	wantCallLabels(t, "retry_delay", delay.Attributes)
}

// TestA96StreamRetriedTwice: a server stream that fails twice before its
// first message is retried twice by grpcguard, and recorded as a call.
func TestA96StreamRetriedTwice(t *testing.T) {
	mp, reader := newMeter(t)
	h, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp, Target: target})
	if err != nil {
		t.Fatal(err)
	}
	const watch = "/grpc.health.v1.Health/Watch"
	cc := newClient(t, startServer(t, &healthServer{failFirst: 2}), nil, nil, grpcguard.WithHooks(h), grpcguard.WithIdempotentMethods(watch))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream end: %v, want EOF", err)
	}
	waitFor(t, 5*time.Second, "the stream's end recorded", func() bool {
		_, ok := collect(t, reader)["grpc.client.call.retries"]
		return ok
	})
	retries := histogram[int64](t, collect(t, reader), "grpc.client.call.retries")
	if retries.Count != 1 || retries.Sum != 2 {
		t.Errorf("retries: count %d sum %d, want one stream with 2", retries.Count, retries.Sum)
	}
	if v, _ := retries.Attributes.Value("grpc.method"); v.AsString() != "grpc.health.v1.Health/Watch" {
		t.Errorf("grpc.method = %q", v.AsString())
	}
}

// TestA96HedgedOnce: a call whose first attempt stalls and that one hedge
// answers is one hedges data point of 1, and no retry.
func TestA96HedgedOnce(t *testing.T) {
	mp, reader := newMeter(t)
	h, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp, Target: target})
	if err != nil {
		t.Fatal(err)
	}
	srv := &healthServer{stallFirst: true}
	cc := newClient(t, startServer(t, srv), nil, nil, grpcguard.WithHooks(h),
		grpcguard.WithIdempotentMethods(check), grpcguard.WithHedgeDelay(20*time.Millisecond))
	if err := callCheck(t, context.Background(), cc); err != nil {
		t.Fatal(err)
	}

	got := collect(t, reader)
	hedges := histogram[int64](t, got, "grpc.client.call.hedges")
	if hedges.Count != 1 || hedges.Sum != 1 {
		t.Errorf("hedges: count %d sum %d, want one call with 1", hedges.Count, hedges.Sum)
	}
	wantCallLabels(t, "hedges", hedges.Attributes)
	if _, ok := got["grpc.client.call.retries"]; ok {
		t.Errorf("retries reported for a call with none: %+v", got["grpc.client.call.retries"])
	}
}

// TestNotResentCounted: a call that may have run and is not idempotent is
// counted once, with the reason, and has no A96 data point (one attempt).
func TestNotResentCounted(t *testing.T) {
	mp, reader := newMeter(t)
	h, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, &healthServer{failFirst: 1}), nil, nil, grpcguard.WithHooks(h))
	if err := callCheck(t, context.Background(), cc); err == nil {
		t.Fatal("the call succeeded; want the server's Unavailable")
	}
	got := collect(t, reader)
	if by := counter(t, got, "grpcguard.client.call.not_resent", "grpcguard.reason"); by[grpcguard.ReasonMayHaveRun] != 1 || len(by) != 1 {
		t.Errorf("not_resent by reason: %v, want %s once", by, grpcguard.ReasonMayHaveRun)
	}
	if _, ok := got["grpc.client.call.retries"]; ok {
		t.Error("retries reported for a call sent once")
	}
}

// TestDisconnections: connections the path closes under an idle client are
// counted as A94's disconnections, with grpc.disconnect_error mapped from
// how they died, and as grpcguard's stale connections with their idle age.
func TestDisconnections(t *testing.T) {
	for _, tc := range []struct {
		rst             bool
		disconnect, why string
	}{
		{false, "unknown", "peer_closed"},
		{true, "connection reset", "reset"},
	} {
		t.Run(tc.why, func(t *testing.T) {
			mp, reader := newMeter(t)
			h, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp, Target: target})
			if err != nil {
				t.Fatal(err)
			}
			p := startProxy(t, startServer(t, &healthServer{}))
			cc := newClient(t, p.addr(), nil, nil, grpcguard.WithHooks(h))
			if err := callCheck(t, context.Background(), cc); err != nil {
				t.Fatal(err)
			}
			if n := p.closeAll(tc.rst); n != 1 {
				t.Fatalf("proxy closed %d connections, want 1", n)
			}
			var got map[string]metricdata.Metrics
			waitFor(t, 5*time.Second, "a disconnection counted", func() bool {
				// One collect may read an instrument before the hook records
				// into it and the next after: wait for all three.
				got = collect(t, reader)
				for _, name := range []string{"grpc.subchannel.disconnections", "grpcguard.client.connection.stale", "grpcguard.client.connection.stale_idle"} {
					if _, ok := got[name]; !ok {
						return false
					}
				}
				return true
			})
			if by := counter(t, got, "grpc.subchannel.disconnections", "grpc.disconnect_error"); by[tc.disconnect] != 1 || len(by) != 1 {
				t.Errorf("disconnections by grpc.disconnect_error: %v, want %q once", by, tc.disconnect)
			}
			if by := counter(t, got, "grpcguard.client.connection.stale", "grpcguard.stale_reason"); by[tc.why] != 1 || len(by) != 1 {
				t.Errorf("stale by reason: %v, want %q once", by, tc.why)
			}
			if idle := histogram[float64](t, got, "grpcguard.client.connection.stale_idle"); idle.Count != 1 {
				t.Errorf("stale_idle count %d, want 1", idle.Count)
			}
			// The client recovers on a new connection.
			if err := callCheck(t, context.Background(), cc); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNoProviders: with neither provider, Hooks sets nothing.
func TestNoProviders(t *testing.T) {
	h, err := opentelemetry.Hooks(opentelemetry.Options{Target: target})
	if err != nil {
		t.Fatal(err)
	}
	v := reflect.ValueOf(h)
	for i := range v.NumField() {
		if !v.Field(i).IsNil() {
			t.Errorf("Hooks(no providers).%s is set, want nil", v.Type().Field(i).Name)
		}
	}
}

// TestDialErrors: a dial that fails is counted, as a direct one.
func TestDialErrors(t *testing.T) {
	mp, reader := newMeter(t)
	h, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp, Target: target})
	if err != nil {
		t.Fatal(err)
	}
	d := grpcguard.NewDialer(grpcguard.WithHooks(h), grpcguard.WithNoProxy())
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := d.DialContext(ctx, "127.0.0.1:1"); err == nil {
		c.Close()
		t.Fatal("dialed port 1")
	}
	got := collect(t, reader)
	if by := counter(t, got, "grpcguard.client.dial_errors", "grpcguard.via_proxy"); by["false"] != 1 || len(by) != 1 {
		t.Errorf("dial_errors by via_proxy: %v, want one direct", by)
	}
}

// TestHorizonGauges: a change of the idle horizon or keepalive sets both
// gauges, in seconds. The Dialer reports changes only (its configured values
// hold until the first), so the event is given to the hook directly.
func TestHorizonGauges(t *testing.T) {
	mp, reader := newMeter(t)
	h, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp, Target: target})
	if err != nil {
		t.Fatal(err)
	}
	h.OnIdleHorizon(grpcguard.IdleHorizonEvent{Horizon: 48 * time.Second, KeepAlive: 15 * time.Second})
	got := collect(t, reader)
	gauge := func(name string) float64 {
		g, ok := got[name].Data.(metricdata.Gauge[float64])
		if !ok || len(g.DataPoints) != 1 {
			t.Fatalf("%s: %#v, want one gauge point; have %v", name, got[name].Data, names(got))
		}
		if v, _ := g.DataPoints[0].Attributes.Value("grpc.target"); v.AsString() != target {
			t.Errorf("%s grpc.target = %q", name, v.AsString())
		}
		return g.DataPoints[0].Value
	}
	if v := gauge("grpcguard.client.idle_horizon"); v != 48 {
		t.Errorf("idle_horizon = %vs, want 48", v)
	}
	if v := gauge("grpcguard.client.keepalive"); v != 15 {
		t.Errorf("keepalive = %vs, want 15", v)
	}
}

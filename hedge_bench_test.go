package grpcguard

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// BenchmarkHedgeLongTail measures what hedging does to a server with a long
// tail: each attempt takes 4ms +-25% (uniform), except 5% of attempts, drawn
// from a seeded RNG, which take 80ms (20x the median). (With a 2ms median the
// default 5ms minimum delay, not the estimate, sets the hedged tail.) Each iteration is one
// call; 16 callers run concurrently over one real loopback connection. It
// reports the call latency p50, p99 and p99.9 in ms and the extra attempts
// sent per call in percent, for no hedging, a fixed 10ms delay, the
// default adaptive delay and the adaptive delay with a 1ms minimum (after a warm-up that is not measured).
//
// Run: go test -run '^$' -bench HedgeLongTail -benchtime 4000x .
func BenchmarkHedgeLongTail(b *testing.B) {
	const (
		median   = 4 * time.Millisecond
		tail     = 80 * time.Millisecond
		tailRate = 0.05
		callers  = 16
		warmup   = 1000
	)
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(1, 2))
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		mu.Lock()
		d := time.Duration(float64(median) * (0.75 + 0.5*rng.Float64()))
		if rng.Float64() < tailRate {
			d = tail
		}
		mu.Unlock()
		sleep(ctx, d)
		return req, nil
	}}
	addr := startServer(b, srv)

	for _, mode := range []struct {
		name string
		opts []Option
	}{
		{"none", []Option{WithHedgingDisabled()}},
		{"fixed-10ms", []Option{WithHedgeDelay(10 * time.Millisecond)}},
		{"adaptive-p95", nil},
		{"adaptive-p95-min1ms", []Option{WithAdaptiveHedgeDelay(DefaultHedgeQuantile, time.Millisecond, DefaultHedgeMaxDelay)}},
	} {
		cc, m := hedgedClient(b, addr, mode.opts...)
		run := func(tb testing.TB, n int) []time.Duration {
			lat := make([]time.Duration, n)
			var next atomic.Int64
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					req, reply := wrapperspb.String("x"), new(wrapperspb.StringValue)
					for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
						start := time.Now()
						if err := cc.Invoke(context.Background(), testsvc.Get, req, reply, grpc.WaitForReady(true)); err != nil {
							tb.Error(err)
							return
						}
						lat[i] = time.Since(start)
					}
				})
			}
			wg.Wait()
			return lat
		}
		run(b, warmup) // connects, fills the budget's window, warms the adaptive delay
		b.Run(mode.name, func(b *testing.B) {
			s, meth := splitMethod(testsvc.Get)
			hedgesBefore := testutil.ToFloat64(m.hedges.WithLabelValues(s, meth))
			b.ResetTimer()
			lat := run(b, b.N)
			b.StopTimer()
			hedges := testutil.ToFloat64(m.hedges.WithLabelValues(s, meth)) - hedgesBefore
			slices.Sort(lat)
			q := func(p float64) float64 {
				i := min(len(lat)-1, int(p*float64(len(lat))))
				return float64(lat[i]) / float64(time.Millisecond)
			}
			extra := 100 * hedges / float64(b.N)
			b.ReportMetric(q(0.50), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(q(0.999), "p99.9-ms")
			b.ReportMetric(extra, "extra-%")
			b.ReportMetric(0, "ns/op") // the wall time per call says nothing here
			delay := testutil.ToFloat64(m.hedgeDelay.WithLabelValues(s, meth)) * 1000
			b.Log(fmt.Sprintf("%-19s calls %5d  p50 %6.2fms  p99 %6.2fms  p99.9 %6.2fms  extra %5.2f%%  delay now %.2fms",
				mode.name, b.N, q(0.50), q(0.99), q(0.999), extra, delay))
		})
	}
}

// The hedging interceptor's happy path against a pass-through interceptor,
// in one run: a method it does not hedge, and an idempotent one answered
// before the hedge delay (one goroutine, one timer, per call):
//
//	go test -run '^$' -bench HedgeHappyPath -benchmem .
func BenchmarkHedgeHappyPath(b *testing.B) {
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	passThrough := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	hedge := UnaryClientHedge(WithHedgeDelay(time.Hour))
	req, reply := wrapperspb.String("x"), new(wrapperspb.StringValue)
	ctx := context.Background()
	for _, bc := range []struct {
		name, method string
		ic           grpc.UnaryClientInterceptor
	}{
		{"pass-through", testsvc.Get, passThrough},
		{"hedge/not-idempotent", testsvc.Echo, hedge},
		{"hedge/idempotent", testsvc.Get, hedge},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.ic(ctx, bc.method, req, reply, nil, invoker); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

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
// from a seeded RNG, which take 80ms (20x the median). Each iteration is one
// call; 16 callers run concurrently over one real loopback connection, on a
// client made with DialOptions. It reports the call latency p50, p99 and
// p99.9 in ms and the extra attempts sent per call in percent, for no
// hedging, a sweep of fixed delays and the default adaptive delay (after a
// warm-up that is not measured): the adaptive delay should sit on the
// frontier the fixed delays draw (no fixed delay has both a lower p99 and
// fewer extra attempts).
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

	type mode struct {
		name string
		opts []Option
	}
	modes := []mode{{"none", nil}}
	for _, d := range []time.Duration{4 * time.Millisecond, 4500 * time.Microsecond, 5 * time.Millisecond,
		5500 * time.Microsecond, 6 * time.Millisecond, 7 * time.Millisecond, 8 * time.Millisecond, 10 * time.Millisecond, 15 * time.Millisecond} {
		modes = append(modes, mode{fmt.Sprintf("fixed-%gms", float64(d)/float64(time.Millisecond)), []Option{WithHedgeDelay(d)}})
	}
	modes = append(modes, mode{"adaptive", []Option{WithHedgeDelay(0)}})
	for _, mode := range modes {
		m := NewMetrics()
		dopts, err := DialOptions(append(mode.opts, WithMetrics(m))...)
		if err != nil {
			b.Fatal(err)
		}
		cc := newClient(b, addr, dopts...)
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
		run(b, warmup) // connects, warms the adaptive delay
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
			b.Log(fmt.Sprintf("%-12s calls %5d  p50 %6.2fms  p99 %6.2fms  p99.9 %6.2fms  extra %5.2f%%  delay now %.2fms",
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
	invoker := func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
		return finishAsGRPC(opts, nil)
	}
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

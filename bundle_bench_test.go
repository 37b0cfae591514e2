package grpcguard

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The whole per-call path under concurrency: 64 callers (b.RunParallel with
// 32 goroutines per CPU on 2 CPUs) making unary calls over one loopback
// connection, plain grpc-go against clients made with DialOptions, in one
// run:
//
//	go test -run '^$' -bench 'Parallel' -benchmem -count 8 . | benchstat -
func BenchmarkParallelEchoPlain(b *testing.B) {
	benchParallel(b, newClient(b, startServer(b, &testsvc.Server{})), testsvc.Echo)
}

// DialOptions with its defaults: Echo is retried only when it provably never
// left the client, so the retry interceptor and the Dialer run on every call.
func BenchmarkParallelEchoDialOptions(b *testing.B) {
	opts, err := DialOptions()
	if err != nil {
		b.Fatal(err)
	}
	benchParallel(b, newClient(b, startServer(b, &testsvc.Server{}), opts...), testsvc.Echo)
}

// Get, plain.
func BenchmarkParallelGetPlain(b *testing.B) {
	benchParallel(b, newClient(b, startServer(b, &testsvc.Server{})), testsvc.Get)
}

// Get (idempotent) with hedging armed: a 50ms delay that never fires.
func BenchmarkParallelGetHedgeArmed(b *testing.B) {
	opts, err := DialOptions(WithHedgeDelay(50 * time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	benchParallel(b, newClient(b, startServer(b, &testsvc.Server{}), opts...), testsvc.Get)
}

func benchParallel(b *testing.B, cc *grpc.ClientConn, method string) {
	ctx := context.Background()
	if _, err := testsvc.Call(ctx, cc, method, "warm"); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, reply := wrapperspb.String("x"), new(wrapperspb.StringValue)
		for pb.Next() {
			if err := cc.Invoke(ctx, method, req, reply); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkParallelOverhead measures the same as the Parallel benchmarks
// above, but paired: plain grpc-go and the DialOptions clients take turns in
// short rounds (64 callers, 64 calls each per round), so that any load the
// machine has in the meantime weighs on both alike. Besides each client's
// ns per call it reports the ratios guarded/plain:
//
//	go test -run '^$' -bench ParallelOverhead -benchtime 100x -count 8 . | benchstat -
//
// (-benchtime counts rounds per client.)
func BenchmarkParallelOverhead(b *testing.B) {
	const callers, perCaller = 64, 64
	addr := startServer(b, &testsvc.Server{})
	dial := func(opts ...Option) *grpc.ClientConn {
		if opts == nil {
			return newClient(b, addr)
		}
		dopts, err := DialOptions(opts...)
		if err != nil {
			b.Fatal(err)
		}
		return newClient(b, addr, dopts...)
	}
	clients := []struct {
		name   string
		cc     *grpc.ClientConn
		method string
		total  time.Duration
	}{
		{"echo-plain", dial(), testsvc.Echo, 0},
		{"echo-dialoptions", dial(WithMaxAttempts(DefaultMaxAttempts)), testsvc.Echo, 0},
		{"get-plain", dial(), testsvc.Get, 0},
		{"get-hedge-armed", dial(WithHedgeDelay(50 * time.Millisecond)), testsvc.Get, 0},
		{"echo-dialoptions-noids", dial(WithRequestIDs(false)), testsvc.Echo, 0},
	}
	round := func(cc *grpc.ClientConn, method string) time.Duration {
		var wg sync.WaitGroup
		start := time.Now()
		for range callers {
			wg.Go(func() {
				req, reply := wrapperspb.String("x"), new(wrapperspb.StringValue)
				for range perCaller {
					if err := cc.Invoke(context.Background(), method, req, reply); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}
	for i := range clients {
		round(clients[i].cc, clients[i].method) // connect and warm up
	}
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for k := range clients {
			i := (n + k) % len(clients) // rotate who goes first
			clients[i].total += round(clients[i].cc, clients[i].method)
		}
	}
	per := func(i int) float64 { return float64(clients[i].total) / float64(b.N*callers*perCaller) }
	for i, c := range clients {
		b.ReportMetric(per(i), c.name+"-ns/call")
	}
	b.ReportMetric(per(1)/per(0), "echo-dialoptions/plain")
	b.ReportMetric(per(3)/per(2), "get-hedge-armed/plain")
	b.ReportMetric(per(4)/per(0), "echo-dialoptions-noids/plain")
	b.ReportMetric(0, "ns/op")
}

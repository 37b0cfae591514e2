package grpcguard

import (
	"context"
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

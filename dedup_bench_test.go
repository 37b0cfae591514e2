package grpcguard

import (
	"context"
	"testing"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// The client's request ids against a pass-through interceptor, in one run:
//
//	go test -run '^$' -bench 'RequestID' -benchmem -count 6 . | benchstat -
//
// AppendToOutgoingContext is grpc-go's own cost of adding one metadata pair
// (four allocations: the list of added pairs, the pair, the boxed metadata,
// the context), the floor of any id carried in metadata; NewID is the id
// alone.
func BenchmarkRequestID(b *testing.B) {
	invoker := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		return nil
	}
	pass := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	run := func(name string, ic grpc.UnaryClientInterceptor) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := ic(ctx, "/p.S/M", nil, nil, nil, invoker); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	run("PassThrough", pass)
	run("IDs", newRequestIDs(defaultConfig(), &clientRuntime{}).unary)
	// With DialOptions' knowledge: the per-method check whether this call
	// should read its response (it is not due in the loop but once per
	// 100ms, and then the invoker here fills nothing).
	run("IDsLearning", newRequestIDs(defaultConfig(), &clientRuntime{dedup: newDedupKnowledge()}).unary)
	b.Run("AppendToOutgoingContext", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = metadata.AppendToOutgoingContext(ctx, RequestIDHeader, "0123456789abcdef0123456789abcdef")
		}
	})
	b.Run("NewID", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = newRequestID()
		}
	})
}

// Unary Echo over loopback through DialOptions without request ids, to set
// against BenchmarkEchoDialOptions (ids on, the default) in one run:
//
//	go test -run '^$' -bench 'EchoDialOptions' -benchmem -count 10 . | benchstat -
func BenchmarkEchoDialOptionsNoIDs(b *testing.B) {
	opts, err := DialOptions(WithRequestIDs(false))
	if err != nil {
		b.Fatal(err)
	}
	benchEcho(b, newClient(b, startServer(b, &testsvc.Server{}), opts...))
}

package grpcguard

import (
	"context"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"
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

// benchStream is the least a server stream does for SetHeader and
// SetTrailer: it takes the metadata, as grpc-go's does, into its own.
type benchStream struct{ header, trailer metadata.MD }

func (s *benchStream) Method() string { return "/p.S/M" }
func (s *benchStream) SetHeader(md metadata.MD) error {
	s.header = metadata.Join(s.header, md)
	return nil
}
func (s *benchStream) SendHeader(md metadata.MD) error { return s.SetHeader(md) }
func (s *benchStream) SetTrailer(md metadata.MD) error {
	s.trailer = metadata.Join(s.trailer, md)
	return nil
}

// dedupBenchCall returns what the server benchmarks call: a handler that
// echoes, its method, a request of some thirty bytes, and a function making
// the incoming context of a call with the given request id.
func dedupBenchCall() (grpc.UnaryHandler, *grpc.UnaryServerInfo, *wrapperspb.StringValue, func(id string) context.Context) {
	handler := func(ctx context.Context, req any) (any, error) {
		return wrapperspb.String(req.(*wrapperspb.StringValue).Value), nil
	}
	info := &grpc.UnaryServerInfo{FullMethod: "/grpcguard.testing.Echo/Echo"}
	callCtx := func(id string) context.Context {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.MD{RequestIDHeader: {id}})
		return grpc.NewContextWithServerTransportStream(ctx, &benchStream{})
	}
	return handler, info, wrapperspb.String("a request of some thirty bytes"), callCtx
}

// The server interceptor with the memory store against the plain handler,
// in one run; each iteration builds the same incoming context, with a new
// request id as grpcguard clients make them:
//
//	go test -run '^$' -bench 'DedupServer' -benchmem -count 8 . | benchstat -
//
// NewID runs the handler under a new claim and stores its outcome, while
// the store fills up to its default bounds; NewIDFullStore does so in a
// store full from the start, as on a busy server, where each new id drops
// old outcomes; Duplicate answers from the store without running the
// handler.
func BenchmarkDedupServer(b *testing.B) {
	handler, info, req, callCtx := dedupBenchCall()
	b.Run("Plain", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := handler(callCtx(newRequestID()), req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("NewID", func(b *testing.B) {
		dedup := UnaryServerDedup(nil)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := dedup(callCtx(newRequestID()), req, info, handler); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("NewIDFullStore", func(b *testing.B) {
		store, _ := NewMemoryStore(MemoryStoreConfig{MaxBytes: 4 << 20})
		dedup := UnaryServerDedup(store)
		for range 40000 {
			dedup(callCtx(newRequestID()), req, info, handler)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := dedup(callCtx(newRequestID()), req, info, handler); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Duplicate", func(b *testing.B) {
		dedup := UnaryServerDedup(nil)
		id := newRequestID()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := dedup(callCtx(id), req, info, handler); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The interceptor's cost over the plain handler, measured in alternating
// blocks of 256 calls each, so that a machine whose speed drifts between
// runs (a busy host) slows both sides alike; the metric overhead-ns/call is
// the difference, the criterion of issue 11 (at most 2µs):
//
//	go test -run '^$' -bench 'DedupOverhead' -count 8 . | benchstat -
func BenchmarkDedupOverhead(b *testing.B) {
	handler, info, req, callCtx := dedupBenchCall()
	for _, full := range []bool{false, true} {
		name := "NewID"
		if full {
			name = "NewIDFullStore"
		}
		b.Run(name, func(b *testing.B) {
			store, _ := NewMemoryStore(MemoryStoreConfig{})
			if full {
				store, _ = NewMemoryStore(MemoryStoreConfig{MaxBytes: 4 << 20})
			}
			dedup := UnaryServerDedup(store)
			if full {
				for range 40000 {
					dedup(callCtx(newRequestID()), req, info, handler)
				}
			}
			const block = 256
			var plain, guarded time.Duration
			calls := 0
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				for range block {
					if _, err := handler(callCtx(newRequestID()), req); err != nil {
						b.Fatal(err)
					}
				}
				t1 := time.Now()
				for range block {
					if _, err := dedup(callCtx(newRequestID()), req, info, handler); err != nil {
						b.Fatal(err)
					}
				}
				plain += t1.Sub(t0)
				guarded += time.Since(t1)
				calls += block
			}
			b.ReportMetric(float64(plain.Nanoseconds())/float64(calls), "plain-ns/call")
			b.ReportMetric(float64(guarded.Nanoseconds())/float64(calls), "dedup-ns/call")
			b.ReportMetric(float64((guarded-plain).Nanoseconds())/float64(calls), "overhead-ns/call")
		})
	}
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

// Unary Echo over loopback, each call with its own request id, against a
// plain server and one with UnaryServerDedup and the memory store, in one
// run: the interceptor's whole cost, with grpc-go's header handling and the
// bytes of DedupHeader on the wire.
//
//	go test -run '^$' -bench 'EchoServer' -benchmem -count 10 . | benchstat -
func BenchmarkEchoServerPlain(b *testing.B) {
	benchEchoIDs(b, newClient(b, startServer(b, &testsvc.Server{})))
}

func BenchmarkEchoServerDedup(b *testing.B) {
	addr := startServer(b, &testsvc.Server{}, grpc.ChainUnaryInterceptor(UnaryServerDedup(nil)))
	benchEchoIDs(b, newClient(b, addr))
}

func benchEchoIDs(b *testing.B, cc *grpc.ClientConn) {
	ctx := context.Background()
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "warm"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := testsvc.Call(withRequestID(ctx, newRequestID()), cc, testsvc.Echo, "x"); err != nil {
			b.Fatal(err)
		}
	}
}

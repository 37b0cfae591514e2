package grpcguard

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// anyMethodServer serves every method nobody registered, as the backend of
// a generic proxy would: names whose method starts with "r" fail their first
// attempt with Unavailable, names starting with "h" are slow on their first
// attempt (until cancelled), the rest answer at once. It counts attempts,
// not names, so that it holds no state per name.
type anyMethodServer struct {
	attempts, retried, hedged atomic.Int64
}

func (s *anyMethodServer) handle(_ any, stream grpc.ServerStream) error {
	s.attempts.Add(1)
	full, _ := grpc.MethodFromServerStream(stream)
	in := new(wrapperspb.StringValue)
	if err := stream.RecvMsg(in); err != nil {
		return err
	}
	name := full[strings.LastIndexByte(full, '/')+1:]
	first := previousAttempts(stream.Context()) == 0
	switch {
	case strings.HasPrefix(name, "r") && first:
		return status.Error(codes.Unavailable, "once")
	case strings.HasPrefix(name, "r"):
		s.retried.Add(1)
	case strings.HasPrefix(name, "h") && first:
		<-stream.Context().Done() // a straggler: the hedge must win
		return stream.Context().Err()
	case strings.HasPrefix(name, "h"):
		s.hedged.Add(1)
	}
	return stream.SendMsg(in)
}

// seriesCount is the number of series m exports.
func seriesCount(t *testing.T, m *Metrics) int {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	return n
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestUnknownMethodsBounded is a generic proxy's client: 100,000 distinct
// method names, none known to the client, through DialOptions with metrics.
// The client's series stay a small constant and its heap does not grow with
// the names, while every call still gets what its options give it: the names
// of "/proxy.Any/*" are idempotent, so a call failing with Unavailable is
// retried, and a call hedged per call is answered by its hedge.
//
// Every call passes through grpcguard's interceptor with its own name. So
// that 100,000 calls take seconds under -race, most of them are answered by
// an interceptor beneath grpcguard's, as a cache in front of the network
// would: the "m" names at once, the "l" names after failing their first
// attempt there. The "r" names (one call in 100) and the "h" names (one in
// 1,000) go over the network to a real server.
func TestUnknownMethodsBounded(t *testing.T) {
	const (
		calls      = 100_000
		callers    = 8
		netEvery   = 100  // one call in 100 goes to the server and fails once there
		hedgeEvery = 1000 // one call in 1,000 has a straggler for an original
		localFail  = 10   // one call in 10 fails its first attempt beneath grpcguard
		checkpoint = 10_000
	)
	srv := &anyMethodServer{}
	var localAttempts, localRetried atomic.Int64
	cache := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		name := method[strings.LastIndexByte(method, '/')+1:]
		switch name[0] {
		case 'm':
		case 'l':
			if previousAttemptsOut(ctx) == 0 {
				localAttempts.Add(1)
				return status.Error(codes.Unavailable, "not cached yet")
			}
			localRetried.Add(1)
		default:
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		localAttempts.Add(1)
		reply.(*wrapperspb.StringValue).Value = req.(*wrapperspb.StringValue).Value
		return nil
	}
	m := NewMetrics()
	dopts, err := DialOptions(WithMetrics(m), WithIdempotentMethods("/proxy.Any/*"), fastBackoff)
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, &testsvc.Server{}, grpc.UnknownServiceHandler(srv.handle)),
		append(dopts, grpc.WithChainUnaryInterceptor(cache))...)

	var next atomic.Int64
	var mu sync.Mutex
	run := func(upTo int64) {
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				req, reply := wrapperspb.String("x"), new(wrapperspb.StringValue)
				for i := next.Add(1) - 1; i < upTo; i = next.Add(1) - 1 {
					name, opts := fmt.Sprintf("/proxy.Any/m%d", i), []grpc.CallOption(nil)
					switch {
					case i%hedgeEvery == 0:
						name, opts = fmt.Sprintf("/proxy.Any/h%d", i), []grpc.CallOption{WithHedgeDelay(5 * time.Millisecond)}
					case i%netEvery == 0:
						name = fmt.Sprintf("/proxy.Any/r%d", i)
					case i%localFail == 0:
						name = fmt.Sprintf("/proxy.Any/l%d", i)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					err := cc.Invoke(ctx, name, req, reply, opts...)
					cancel()
					if err != nil {
						mu.Lock()
						t.Errorf("%s: %v", name, err)
						mu.Unlock()
						return
					}
				}
			})
		}
		wg.Wait()
		next.Store(upTo)
	}
	run(checkpoint) // every path has run: what grows from here grows with the names
	heapAt10k, seriesAt10k := int(heapAfterGC()), seriesCount(t, m)
	run(calls)
	heap, series := int(heapAfterGC()), seriesCount(t, m)
	t.Logf("%d unknown methods: heap after GC %d KiB at %d calls, %d KiB at %d; %d series, then %d",
		calls, heapAt10k>>10, checkpoint, heap>>10, calls, seriesAt10k, series)

	if series > 40 || series != seriesAt10k {
		t.Errorf("%d series after %d methods (%d after %d), want a small constant", series, calls, seriesAt10k, checkpoint)
	}
	if growth := heap - heapAt10k; growth > 1<<20 {
		t.Errorf("heap grew by %d KiB over %d new method names", growth>>10, calls-checkpoint)
	}
	var netRetries, localRetries, hedges, plain int64
	for i := range int64(calls) {
		switch {
		case i%hedgeEvery == 0:
			hedges++
		case i%netEvery == 0:
			netRetries++
		case i%localFail == 0:
			localRetries++
		default:
			plain++
		}
	}
	if got := srv.retried.Load(); got != netRetries {
		t.Errorf("%d calls succeeded on a retry at the server, want %d", got, netRetries)
	}
	if got := localRetried.Load(); got != localRetries {
		t.Errorf("%d calls succeeded on a retry beneath grpcguard, want %d", got, localRetries)
	}
	if got := srv.hedged.Load(); got < hedges { // a second hedge may answer too
		t.Errorf("%d hedges answered, want at least %d (each of those calls had a straggler for an original)", got, hedges)
	}
	if got := localAttempts.Load(); got != plain+2*localRetries {
		t.Errorf("%d attempts answered beneath grpcguard, want %d", got, plain+2*localRetries)
	}
	if n := retriedCount(m, "/other/other", codes.Unavailable); n != int(netRetries+localRetries) {
		t.Errorf("retries_total{other, other} = %d, want %d", n, netRetries+localRetries)
	}
}

// TestKnownMethodsKeepLabels: a method generated code calls (grpc.StaticMethod),
// one in the protobuf registry, one named in WithIdempotentMethods and one
// named in the service config are known and keep their labels; a method known
// only by its service's wildcard is recorded as "other".
func TestKnownMethodsKeepLabels(t *testing.T) {
	srv := &anyMethodServer{}
	m := NewMetrics()
	cc := bundleClient(t, startServer(t, &testsvc.Server{Unary: failFirst(1, codes.Unavailable)}, grpc.UnknownServiceHandler(srv.handle)),
		WithMetrics(m), WithIdempotentMethods("/shop.Cart/rGet", "/proxy.Any/*", "/gen.Svc/*"), fastBackoff,
		WithServiceConfig(`{"methodConfig":[{"name":[{"service":"shop.Search","method":"rQuery"}],
			"retryPolicy":{"maxAttempts":2,"initialBackoff":"0.001s","maxBackoff":"0.001s","backoffMultiplier":1,"retryableStatusCodes":["UNAVAILABLE"]}}]}`))
	for _, tc := range []struct {
		method string
		opts   []grpc.CallOption
		labels string
	}{
		{testsvc.Get, nil, testsvc.Get},
		{"/shop.Cart/rGet", nil, "/shop.Cart/rGet"},
		{"/shop.Search/rQuery", nil, "/shop.Search/rQuery"},
		{"/gen.Svc/rStatic", []grpc.CallOption{grpc.StaticMethod()}, "/gen.Svc/rStatic"},
		{"/proxy.Any/rAny", nil, "/other/other"},
	} {
		if err := cc.Invoke(ctxTimeout(t, 5*time.Second), tc.method, wrapperspb.String("x"), new(wrapperspb.StringValue), tc.opts...); err != nil {
			t.Fatalf("%s: %v", tc.method, err)
		}
		if n := retriedCount(m, tc.labels, codes.Unavailable); n != 1 {
			t.Errorf("%s: retries_total{%s} = %d, want 1", tc.method, tc.labels, n)
		}
	}
}

// TestInvalidMethodNames: names that are not "/pkg.Service/Method" go through
// every path without a panic and are counted under "other": through a real
// client, and, for the retry path, through the interceptor with an attempt
// that never reached a transport (so that any method may be resent).
func TestInvalidMethodNames(t *testing.T) {
	m := NewMetrics()
	dopts, err := DialOptions(WithMetrics(m), WithHedgeDelay(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, &testsvc.Server{}), dopts...)
	names := []string{"", "x", "/", "//", "/svc", "/svc/", "//m", "/a/b/c", "/svc//m", "svc/m", "/svc/m/"}
	for _, name := range names {
		cc.Invoke(ctxTimeout(t, 5*time.Second), name, wrapperspb.String("x"), new(wrapperspb.StringValue)) // must not panic
	}
	cs := standaloneState([]Option{WithMetrics(m)})
	fails := 0
	invoker := func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
		fails++
		if fails%2 == 1 {
			// grpc failing the attempt before it had a transport
			return finishAsGRPC(opts, status.Error(codes.Unavailable, "no transport yet"))
		}
		return finishAsGRPC(opts, nil)
	}
	for _, name := range names {
		if err := cs.unary(context.Background(), name, wrapperspb.String("x"), new(wrapperspb.StringValue), nil, invoker); err != nil {
			t.Errorf("%q: %v", name, err)
		}
		if _, _, ok := parseMethod(name); ok {
			t.Errorf("%q parsed as a valid name", name)
		}
	}
	if n := retriedCount(m, "/other/other", codes.Unavailable); n != len(names) {
		t.Errorf("retries_total{other, other} = %d, want %d", n, len(names))
	}
	if n := unprocessedCount(m, "/other/other"); n != len(names) {
		t.Errorf("retries_unprocessed_total{other, other} = %d, want %d", n, len(names))
	}
	if p := cs.methods.byMethod.Load(); p != nil && len(*p) != 0 {
		t.Errorf("%d invalid names kept in the method table", len(*p))
	}
}

package grpcguard

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/grpcguard/grpcguard/internal/testutil"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestMain(m *testing.M) {
	testutil.Main(m) // one of the root package and test/ at a time
}

// Helpers shared with the end-to-end tests in test/.
var (
	startServer      = testutil.StartServer
	startProxy       = testutil.StartProxy
	ctxTimeout       = testutil.CtxTimeout
	waitFor          = testutil.WaitFor
	previousAttempts = testutil.PreviousAttempts
	newClient        = testutil.NewClient
	serveOn          = testutil.ServeOn
	serveGRPC        = testutil.ServeGRPC
	serveLoopback    = testutil.ServeLoopback
)

// guardedClient dials target through a new Dialer with its interceptors.
func guardedClient(t testing.TB, target string, opts ...Option) (*grpc.ClientConn, *Dialer) {
	t.Helper()
	d := NewDialer(opts...)
	t.Cleanup(func() { d.Close() })
	cc := newClient(t, target,
		grpc.WithContextDialer(d.DialContext),
		grpc.WithChainUnaryInterceptor(d.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(d.StreamClientInterceptor()))
	return cc, d
}

func staleCount(m *Metrics, r StaleReason) int {
	return int(promtestutil.ToFloat64(m.staleBy[r]))
}

func staleTotal(m *Metrics) int {
	n := 0
	for r := StaleReason(0); r < numStaleReasons; r++ {
		n += staleCount(m, r)
	}
	return n
}

// newClientTarget dials a full grpc target through d and its interceptors.
func newClientTarget(t testing.TB, target string, d *Dialer) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(d.DialContext),
		grpc.WithChainUnaryInterceptor(d.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(d.StreamClientInterceptor()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// loopbackPair dials a fresh 127.0.0.1 listener with dial and returns the
// client conn and the accepted server conn, both closed when the test ends.
func loopbackPair(t testing.TB, dial func(context.Context, string) (net.Conn, error)) (net.Conn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := dial(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s.(*net.TCPConn)
}

// dialTCP dials addr over TCP without grpcguard.
func dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	return new(net.Dialer).DialContext(ctx, "tcp", addr)
}

// splitMethod returns the metric labels of a known method "/pkg.Service/Method".
func splitMethod(fullMethod string) (service, method string) {
	service, method, _ = parseMethod(fullMethod)
	return service, method
}

// spyDialOptions is DialOptions(opts...) with a handle on its Dialer, taken
// from the first conn it dials.
func spyDialOptions(t *testing.T, opts ...Option) ([]grpc.DialOption, *atomic.Pointer[Dialer]) {
	t.Helper()
	var d atomic.Pointer[Dialer]
	dopts, err := dialOptions(opts, func(dial dialFunc) dialFunc {
		return func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := dial(ctx, addr)
			if gc, ok := c.(*conn); ok {
				d.Store(gc.d)
			}
			return c, err
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return dopts, &d
}

package dedup

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestMain shares the lock of the root package and test/ (testutil.Main):
// the soak here counts on its schedule as they do on theirs.
func TestMain(m *testing.M) {
	testutil.Main(m)
}

// startServer serves srv on 127.0.0.1 until the test ends.
func startServer(t testing.TB, srv *testsvc.Server, opts ...grpc.ServerOption) string {
	t.Helper()
	addr, stop, err := testsvc.Serve(srv, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// startProxy puts a fault proxy in front of target until the test ends.
func startProxy(t testing.TB, target string, cfg faultproxy.Config) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.Start(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// newClient dials target with a plain grpc.NewClient: the server half is
// tested against calls that carry the ids the test gives them, with no
// grpcguard client in between. It is closed when the test ends.
func newClient(t testing.TB, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	cc, err := grpc.NewClient("passthrough:///"+target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// serveLoopback serves gs on a new 127.0.0.1 port until the test ends and
// returns its address.
func serveLoopback(t testing.TB, gs *grpc.Server) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return ln.Addr().String()
}

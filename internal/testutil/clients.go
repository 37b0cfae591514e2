package testutil

import (
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// DialTarget dials a full grpc target (scheme:///name) with insecure
// credentials first, so that opts may replace them; the conn is closed when
// the test ends.
func DialTarget(t testing.TB, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// NewClient dials addr ("host:port") directly, as DialTarget.
func NewClient(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	return DialTarget(t, "passthrough:///"+addr, opts...)
}

// RoundRobin dials addrs through a manual resolver with the round_robin
// balancer, as DialTarget.
func RoundRobin(t testing.TB, addrs []string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	rb := manual.NewBuilderWithScheme("testutil")
	var st resolver.State
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	rb.InitialState(st)
	return DialTarget(t, rb.Scheme()+":///backends", append(opts, grpc.WithResolvers(rb),
		grpc.WithDefaultServiceConfig(RoundRobinConfig))...)
}

// ServeGRPC serves gs on ln until the test ends.
func ServeGRPC(t testing.TB, gs *grpc.Server, ln net.Listener) {
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	t.Cleanup(func() { gs.Stop(); <-done })
}

// ServeLoopback serves gs on a new 127.0.0.1 port until the test ends and
// returns its address.
func ServeLoopback(t testing.TB, gs *grpc.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ServeGRPC(t, gs, ln)
	return ln.Addr().String()
}

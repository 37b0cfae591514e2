package testutil

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// StartServer serves srv on 127.0.0.1 until the test ends and returns its
// address.
func StartServer(t testing.TB, srv *testsvc.Server, opts ...grpc.ServerOption) string {
	t.Helper()
	addr, stop, err := testsvc.Serve(srv, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// ServeOn serves srv on ln until the test ends.
func ServeOn(t testing.TB, srv *testsvc.Server, ln net.Listener) {
	gs := grpc.NewServer()
	srv.Register(gs)
	ServeGRPC(t, gs, ln)
}

// StartProxy puts a fault proxy in front of target until the test ends.
func StartProxy(t testing.TB, target string, cfg faultproxy.Config) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.Start(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// CtxTimeout returns a context that ends after d or when the test ends.
func CtxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// WaitFor polls cond until it holds, and fails t if it does not within
// the time given; what names the condition in the failure.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// PreviousAttempts reads grpc-previous-rpc-attempts in a server handler: 0
// for an original attempt.
func PreviousAttempts(ctx context.Context) int {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("grpc-previous-rpc-attempts"); len(v) > 0 {
		n, _ := strconv.Atoi(v[0])
		return n
	}
	return 0
}

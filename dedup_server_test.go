package grpcguard

import (
	"context"
	"net"
	"sync"
	"testing"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// The server half is tested in package dedup; the client's tests run it
// against servers made here.

// dedupServer serves srv with the interceptor of dedup.NewServer(store,
// opts...) innermost after outer, and its dedup service, and returns its
// address.
func dedupServer(t testing.TB, srv *testsvc.Server, store dedup.Store, outer []grpc.UnaryServerInterceptor, opts ...dedup.Option) string {
	t.Helper()
	addr, _ := serveDedup(t, srv, store, outer, opts...)
	return addr
}

// serveDedup is dedupServer that also returns a function that stops the
// server at once (as a process that dies), also called when the test ends.
func serveDedup(t testing.TB, srv *testsvc.Server, store dedup.Store, outer []grpc.UnaryServerInterceptor, opts ...dedup.Option) (string, func()) {
	t.Helper()
	sd := dedup.NewServer(store, opts...)
	chain := append(append([]grpc.UnaryServerInterceptor(nil), outer...), sd.UnaryServerInterceptor())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(chain...))
	srv.Register(gs)
	sd.RegisterService(gs)
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	var once sync.Once
	stop := func() { once.Do(func() { gs.Stop(); <-done }) }
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// withRequestID returns ctx carrying id as the call's request id.
func withRequestID(ctx context.Context, id string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, RequestIDHeader, id)
}

package grpcguard

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// unregisteredService is a service whose descriptor is in no registry, as
// one compiled into another binary, or registered under another name.
const unregisteredService = "grpcguard.testing.Unregistered"

// serveUnregistered serves unregisteredService's one method, Pay, whose
// handler counts its runs into runs, under dedup with store.
func serveUnregistered(t testing.TB, store Store, runs *int) string {
	t.Helper()
	sd := NewServerDedup(store)
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(sd.UnaryServerInterceptor()))
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: unregisteredService,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Pay", Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, req any) (any, error) {
				*runs++
				return wrapperspb.String("paid " + req.(*wrapperspb.StringValue).GetValue()), nil
			}
			return icpt(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/" + unregisteredService + "/Pay"}, h)
		}}},
	}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return ln.Addr().String()
}

// TestDedupReplayWithoutRegistry (issue 18, item 5): two replicas share a
// store; A runs a call of a method whose reply type is in no protobuf
// registry; the same id on B, which never ran the method, is answered with
// A's reply, byte for byte, and marked as replayed.
func TestDedupReplayWithoutRegistry(t *testing.T) {
	store, _ := NewMemoryStore(MemoryStoreConfig{})
	var runsA, runsB int
	a := newClient(t, serveUnregistered(t, store, &runsA))
	b := newClient(t, serveUnregistered(t, store, &runsB))
	ctx := withRequestID(ctxTimeout(t, 5*time.Second), "unreg-1")
	method := "/" + unregisteredService + "/Pay"
	first := new(wrapperspb.StringValue)
	if err := a.Invoke(ctx, method, wrapperspb.String("x"), first); err != nil {
		t.Fatal(err)
	}
	again := new(wrapperspb.StringValue)
	var hdr metadata.MD
	if err := b.Invoke(ctx, method, wrapperspb.String("x"), again, grpc.Header(&hdr)); err != nil {
		t.Fatalf("replay on the replica that never ran the method: %v", err)
	}
	if again.GetValue() != "paid x" || runsA != 1 || runsB != 0 {
		t.Fatalf("replay %q, runs A %d B %d; want A's reply, 1 and 0", again.GetValue(), runsA, runsB)
	}
	if v := hdr.Get(DedupReplayedHeader); len(v) != 1 {
		t.Fatalf("header %v: want %s on a replayed reply", hdr, DedupReplayedHeader)
	}
}

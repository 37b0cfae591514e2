package dedup

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
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
	sd := NewServer(store)
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
	return serveLoopback(t, gs)
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
	if v := hdr.Get(ReplayedHeader); len(v) != 1 {
		t.Fatalf("header %v: want %s on a replayed reply", hdr, ReplayedHeader)
	}
}

// serveRequestInfo serves a method whose request and reply are
// errdetails.RequestInfo, a message with a request_id field as AIP-155
// asks, under dedup configured by opts; the handler counts its runs.
func serveRequestInfo(t testing.TB, runs *atomic.Int32, opts ...Option) string {
	t.Helper()
	sd := NewServer(nil, opts...)
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(sd.UnaryServerInterceptor()))
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: "grpcguard.testing.Payments",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Pay", Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(errdetails.RequestInfo)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, req any) (any, error) {
				n := runs.Add(1)
				return &errdetails.RequestInfo{RequestId: req.(*errdetails.RequestInfo).GetRequestId(), ServingData: fmt.Sprint("run ", n)}, nil
			}
			return icpt(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/grpcguard.testing.Payments/Pay"}, h)
		}}},
	}, nil)
	return serveLoopback(t, gs)
}

// TestDedupIDFromRequestField (issue 18, item 6): with
// WithIDField("idempotency_key", "request_id") a request carrying its
// AIP-155 request_id and no RequestIDHeader runs once and is answered from
// the store after; an empty request_id runs every time.
func TestDedupIDFromRequestField(t *testing.T) {
	var runs atomic.Int32
	cc := newClient(t, serveRequestInfo(t, &runs, WithIDField("idempotency_key", "request_id")))
	ctx := ctxTimeout(t, 5*time.Second)
	pay := func(id string) (string, metadata.MD, error) {
		out := new(errdetails.RequestInfo)
		var hdr metadata.MD
		err := cc.Invoke(ctx, "/grpcguard.testing.Payments/Pay", &errdetails.RequestInfo{RequestId: id}, out, grpc.Header(&hdr))
		return out.GetServingData(), hdr, err
	}
	for i := range 3 {
		out, hdr, err := pay("order-7")
		if err != nil || out != "run 1" {
			t.Fatalf("call %d: %q, %v; want the first run's reply", i, out, err)
		}
		if replayed := len(hdr.Get(ReplayedHeader)) == 1; replayed != (i > 0) {
			t.Fatalf("call %d: replayed marker %v", i, replayed)
		}
	}
	for range 2 {
		if _, _, err := pay(""); err != nil {
			t.Fatal(err)
		}
	}
	if n := runs.Load(); n != 3 {
		t.Fatalf("%d runs, want 3: one for order-7, two without an id", n)
	}
	if err := NewServer(nil, WithIDField("no-such name")).d.err; err == nil {
		t.Fatal("an invalid field name was accepted")
	}
}

package grpcguard

import (
	"context"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/wire"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// pickFirst dials addrs, in order, with pick_first and DialOptions(opts...).
func pickFirst(t testing.TB, addrs []string, opts ...Option) *grpc.ClientConn {
	t.Helper()
	dopts, err := DialOptions(opts...)
	if err != nil {
		t.Fatal(err)
	}
	rb := manual.NewBuilderWithScheme("pf")
	var st resolver.State
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	rb.InitialState(st)
	cc, err := grpc.NewClient(rb.Scheme()+":///service", append(dopts,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"pick_first":{}}]}`))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestDedupResendNeverRunsOnReplicaWithoutDedup (issue 18, item 2):
// pick_first over [A with dedup, B without]. The client learned from A's
// advert that A deduplicates; A runs a call and dies before replying; the
// resend fails over to B, which ignores the id. Before a resend relying on
// learned dedup the client asks the dedup service, which B does not have:
// the call is not resent and ran once (before: B ran it again).
func TestDedupResendNeverRunsOnReplicaWithoutDedup(t *testing.T) {
	ran := make(chan struct{}, 1)
	a := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req == "pay" {
			ran <- struct{}{}
			<-ctx.Done() // A dies before it replies
			return "", ctx.Err()
		}
		return req, nil
	}}
	aAddr, stopA := serveDedup(t, a, nil, nil)
	b := &testsvc.Server{}
	bAddr := startServer(t, b)
	cc := pickFirst(t, []string{aAddr, bAddr})
	ctx := ctxTimeout(t, 20*time.Second)
	learnDedup(t, ctx, cc)
	errc := make(chan error, 1)
	go func() {
		_, err := testsvc.Call(ctx, cc, testsvc.Echo, "pay")
		errc <- err
	}()
	<-ran
	stopA()
	err := <-errc
	if n := a.Runs(testsvc.Echo, "pay") + b.Runs(testsvc.Echo, "pay"); n != 1 {
		t.Fatalf("the call ran %d times (A %d, B %d), want 1; err %v", n, a.Runs(testsvc.Echo, "pay"), b.Runs(testsvc.Echo, "pay"), err)
	}
	if err == nil {
		t.Fatal("the call succeeded: its reply was lost")
	}
	if why, _ := NotResentReason(err); why != ReasonDedupUnconfirmed {
		t.Errorf("NotResentReason = %q, want %s: the caller should see why it was not resent", why, ReasonDedupUnconfirmed)
	}
}

// TestDedupLookupAnswersLostReply: A and B share one store and both have
// the dedup service; A runs a call and dies before replying; the lookup,
// failed over to B, finds A's outcome and returns it: no resend at all. A
// resend of an id the store never saw runs under the lookup's fence.
func TestDedupLookupAnswersLostReply(t *testing.T) {
	store, _ := dedup.NewMemoryStore(dedup.MemoryStoreConfig{})
	ran := make(chan struct{}, 1)
	a := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req == "pay" {
			defer func() { ran <- struct{}{} }()
		}
		return req + " on A", nil
	}}
	hold := make(chan struct{})
	aAddr, stopA := serveDedup(t, a, store, []grpc.UnaryServerInterceptor{
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			resp, err := h(ctx, req)
			if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(RequestIDHeader)) == 1 && info.FullMethod == testsvc.Echo {
				if r, _ := resp.(interface{ GetValue() string }); r != nil && r.GetValue() == "pay on A" {
					<-hold // the outcome is stored; the reply never leaves
				}
			}
			return resp, err
		}})
	b := &testsvc.Server{}
	bAddr := dedupServer(t, b, store, nil)
	cc := pickFirst(t, []string{aAddr, bAddr})
	ctx := ctxTimeout(t, 20*time.Second)
	learnDedup(t, ctx, cc)
	errc := make(chan error, 1)
	var out string
	go func() {
		var err error
		out, err = testsvc.Call(ctx, cc, testsvc.Echo, "pay")
		errc <- err
	}()
	<-ran
	close(hold)
	stopA()
	if err := <-errc; err != nil || out != "pay on A" {
		t.Fatalf("lost reply: %q, %v; want A's outcome from the store", out, err)
	}
	if a.Runs(testsvc.Echo, "pay") != 1 || b.Runs(testsvc.Echo, "pay") != 0 {
		t.Fatalf("runs: A %d, B %d; want 1, 0", a.Runs(testsvc.Echo, "pay"), b.Runs(testsvc.Echo, "pay"))
	}
}

// learnDedup makes one call through cc that asks for the dedup advert, and
// fails t unless the reply carries it: the client has then learned it.
func learnDedup(t *testing.T, ctx context.Context, cc *grpc.ClientConn) {
	t.Helper()
	var hdr metadata.MD
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "learn", grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if _, ok := wire.ParseAdvert(hdr); !ok {
		t.Fatalf("the client did not learn A's dedup: %v", hdr)
	}
}

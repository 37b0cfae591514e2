package redisstore

import (
	"context"
	gtestutil "github.com/grpcguard/grpcguard/internal/testutil"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/wire"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// replica is one grpc server of a service, deduplicating through a Redis
// store; it names itself in the x-replica response header.
type replica struct {
	name string
	srv  *testsvc.Server
	addr string
}

func startReplica(t testing.TB, name string, store dedup.Store, handler func(ctx context.Context, method, req string) (string, error), opts ...dedup.Option) *replica {
	t.Helper()
	r := &replica{name: name, srv: &testsvc.Server{Unary: handler}}
	tag := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		grpc.SetHeader(ctx, metadata.Pairs("x-replica", name))
		return h(ctx, req)
	}
	sd := dedup.NewServer(store, opts...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(tag, sd.UnaryServerInterceptor()))
	r.srv.Register(gs)
	sd.RegisterService(gs)
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	r.addr = ln.Addr().String()
	return r
}

func withID(ctx context.Context, id string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, dedup.RequestIDHeader, id)
}

// call makes a unary call and returns the reply and the replica that answered.
func call(ctx context.Context, cc *grpc.ClientConn, method, req string) (reply, replica string, hdr metadata.MD, err error) {
	reply, err = testsvc.Call(ctx, cc, method, req, grpc.Header(&hdr))
	if v := hdr.Get("x-replica"); len(v) == 1 {
		replica = v[0]
	}
	return reply, replica, hdr, err
}

// scopeOf returns the store scope an AdvertHeader in hdr names.
func scopeOf(t testing.TB, hdr metadata.MD) string {
	adv, ok := wire.ParseAdvert(hdr)
	if !ok {
		t.Fatalf("no valid %s in %v", dedup.AdvertHeader, hdr)
	}
	return adv.Scope
}

// resend marks ctx as the resend of a call whose first attempt began at
// start and may have run under scope: what the client's retry does when it
// relies on deduplication, made by hand here so that the server half is
// proven on its own (TestReplicasSoakEveryIDRunsOnce goes through the
// client's retry).
func resend(ctx context.Context, scope string, start time.Time) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	id := md.Get(dedup.RequestIDHeader)[0]
	md.Set(dedup.RequestIDHeader, id+wire.ResendParams(scope, time.Since(start).Nanoseconds(), ""))
	return metadata.NewOutgoingContext(ctx, md)
}

// TestReplicasLostReplyResentOnOtherReplicaRunsOnce: two replicas share one
// Redis behind round_robin; a call's reply is lost after replica A ran it
// (the proxy resets the client before the reply); the resend with the same
// id, on replica B, gets A's outcome; the call ran once.
func TestReplicasLostReplyResentOnOtherReplicaRunsOnce(t *testing.T) {
	r := startRedis(t)
	var runs atomic.Int32
	handler := func(name string) func(context.Context, string, string) (string, error) {
		return func(ctx context.Context, method, req string) (string, error) {
			runs.Add(1)
			return req + " ran on " + name, nil
		}
	}
	a := startReplica(t, "A", r.store(t, Options{}), handler("A"))
	b := startReplica(t, "B", r.store(t, Options{}), handler("B"))
	// The proxy before A loses the reply on its first connection only.
	pA, err := faultproxy.Start(a.addr, faultproxy.Config{Choose: func(n int) faultproxy.Mode {
		if n == 0 {
			return faultproxy.LostReply
		}
		return faultproxy.Pass
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pA.Close() })
	cc := gtestutil.RoundRobin(t, []string{pA.Addr(), b.addr})
	ctx := ctxTimeout(t, 20*time.Second)

	// Calls, each with its own id, until one lands on A's lost-reply
	// connection; the others teach the scope.
	var scope, lostID string
	var start time.Time
	for i := 0; lostID == ""; i++ {
		if i == 20 {
			t.Fatal("no call reached replica A in 20 round_robin picks")
		}
		id := "call-" + strconv.Itoa(i)
		start = time.Now()
		_, _, hdr, err := call(withID(ctx, id+";advertise"), cc, testsvc.Echo, "pay "+id)
		switch {
		case err == nil:
			scope = scopeOf(t, hdr)
		case status.Code(err) == codes.Unavailable:
			lostID = id
		default:
			t.Fatal(err)
		}
	}
	if pA.Stats().LostReplies != 1 || a.srv.Runs(testsvc.Echo, "pay "+lostID) != 1 {
		t.Fatalf("proxy %+v, A ran the lost call %d times: want the reply lost after A ran it", pA.Stats(), a.srv.Runs(testsvc.Echo, "pay "+lostID))
	}
	if scope == "" {
		// Every call so far was the lost one: learn the scope from B.
		_, _, hdr, err := call(withID(ctx, "warm;advertise"), gtestutil.NewClient(t, b.addr), testsvc.Echo, "warm")
		if err != nil {
			t.Fatal(err)
		}
		scope = scopeOf(t, hdr)
	}

	want := "pay " + lostID + " ran on A"
	callCtx := resend(withID(ctx, lostID), scope, start)
	// The resend through round_robin, then on each replica explicitly.
	for _, c := range []struct {
		name string
		cc   *grpc.ClientConn
	}{
		{"round_robin", cc},
		{"B", gtestutil.NewClient(t, b.addr)},
		{"A", gtestutil.NewClient(t, a.addr)},
	} {
		reply, answered, _, err := call(callCtx, c.cc, testsvc.Echo, "pay "+lostID)
		if err != nil || reply != want {
			t.Fatalf("resend via %s: %q, %v; want A's outcome %q", c.name, reply, err, want)
		}
		t.Logf("resend via %s answered by replica %s", c.name, answered)
	}
	if n := a.srv.Runs(testsvc.Echo, "pay "+lostID) + b.srv.Runs(testsvc.Echo, "pay "+lostID); n != 1 {
		t.Fatalf("the lost call ran %d times across the replicas, want 1", n)
	}
}

// TestReplicasDuplicateWaitsAcrossReplicas: a duplicate reaching B while A
// runs the id waits, woken by A's notification, and gets A's outcome.
func TestReplicasDuplicateWaitsAcrossReplicas(t *testing.T) {
	r := startRedis(t)
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	a := startReplica(t, "A", r.store(t, Options{PollInterval: time.Hour}), func(ctx context.Context, method, req string) (string, error) {
		started <- struct{}{}
		<-release
		return "done by A", nil
	})
	bStore := r.store(t, Options{PollInterval: time.Hour})
	b := startReplica(t, "B", bStore, func(ctx context.Context, method, req string) (string, error) {
		return "ran on B", nil
	})
	ctx := withID(ctxTimeout(t, 20*time.Second), "wait-id")
	first := make(chan error, 1)
	go func() {
		_, err := testsvc.Call(ctx, gtestutil.NewClient(t, a.addr), testsvc.Echo, "x")
		first <- err
	}()
	<-started
	second := make(chan string, 1)
	go func() {
		reply, err := testsvc.Call(ctx, gtestutil.NewClient(t, b.addr), testsvc.Echo, "x")
		if err != nil {
			reply = err.Error()
		}
		second <- reply
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		bStore.mu.Lock()
		n := len(bStore.waiters["wait-id"])
		bStore.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the duplicate on B never waited")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if got := <-second; got != "done by A" {
		t.Fatalf("duplicate on B got %q, want A's outcome", got)
	}
	if b.srv.Calls() != 0 {
		t.Fatal("B ran the duplicate")
	}
}

// TestReplicasReusedIDNeverReadsAnothersReply: an id reused with another
// request on another replica is refused, and never answered with the first
// caller's reply.
func TestReplicasReusedIDNeverReadsAnothersReply(t *testing.T) {
	r := startRedis(t)
	h := func(ctx context.Context, method, req string) (string, error) { return "private reply for " + req, nil }
	a := startReplica(t, "A", r.store(t, Options{}), h)
	b := startReplica(t, "B", r.store(t, Options{}), h)
	ctx := withID(ctxTimeout(t, 10*time.Second), "reused")
	if _, err := testsvc.Call(ctx, gtestutil.NewClient(t, a.addr), testsvc.Echo, "alice"); err != nil {
		t.Fatal(err)
	}
	reply, err := testsvc.Call(ctx, gtestutil.NewClient(t, b.addr), testsvc.Echo, "mallory")
	if status.Code(err) != codes.AlreadyExists || reply != "" || strings.Contains(err.Error(), "alice") {
		t.Fatalf("reused id on B: %q, %v; want AlreadyExists without the first reply", reply, err)
	}
}

// TestReplicasRedisDown: with Redis gone, a call with an id fails with
// Unavailable before its handler runs (fail closed), or runs without dedup
// and without advertising it (fail open); a Redis that dies while the handler
// runs does not cost the caller its reply.
func TestReplicasRedisDown(t *testing.T) {
	r := startRedis(t)
	h := func(ctx context.Context, method, req string) (string, error) {
		if req == "kill" {
			r.stop()
		}
		return "ok " + req, nil
	}
	m := dedup.NewMetrics()
	closed := startReplica(t, "closed", r.store(t, Options{OpTimeout: 300 * time.Millisecond}), h, dedup.WithMetrics(m))
	open := startReplica(t, "open", r.store(t, Options{OpTimeout: 300 * time.Millisecond}), h, dedup.WithFailOpen())
	ctx := ctxTimeout(t, 20*time.Second)

	reply, err := testsvc.Call(withID(ctx, "k1"), gtestutil.NewClient(t, closed.addr), testsvc.Echo, "kill")
	if err != nil || reply != "ok kill" {
		t.Fatalf("Redis died during the handler: %q, %v; want the reply anyway", reply, err)
	}
	_, err = testsvc.Call(withID(ctx, "k2"), gtestutil.NewClient(t, closed.addr), testsvc.Echo, "x")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "redisstore: claim") {
		t.Fatalf("fail closed: %v, want Unavailable naming the store", err)
	}
	if closed.srv.Runs(testsvc.Echo, "x") != 0 {
		t.Fatal("fail closed ran the handler")
	}
	var hdr metadata.MD
	reply, err = testsvc.Call(withID(ctx, "k3;advertise"), gtestutil.NewClient(t, open.addr), testsvc.Echo, "x", grpc.Header(&hdr))
	if err != nil || reply != "ok x" || len(hdr.Get(dedup.AdvertHeader)) != 0 {
		t.Fatalf("fail open: %q, %v, header %v; want the reply and no advert", reply, err, hdr)
	}
	// The finish after the handler that killed Redis, the claim of k2.
	want := `
# HELP grpcguard_dedup_store_errors_total Dedup store operations that failed, by operation.
# TYPE grpcguard_dedup_store_errors_total counter
grpcguard_dedup_store_errors_total{op="claim"} 1
grpcguard_dedup_store_errors_total{op="finish"} 1
grpcguard_dedup_store_errors_total{op="release"} 0
grpcguard_dedup_store_errors_total{op="wait"} 0
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "grpcguard_dedup_store_errors_total"); err != nil {
		t.Fatal(err)
	}
}

// TestReplicasOutcomeStoredAfterCallerLeft: the caller goes away while the
// handler runs; the handler finishes anyway, and its outcome is stored for
// the resend, although the call's context was canceled.
func TestReplicasOutcomeStoredAfterCallerLeft(t *testing.T) {
	r := startRedis(t)
	var runs atomic.Int32
	a := startReplica(t, "A", r.store(t, Options{}), func(ctx context.Context, method, req string) (string, error) {
		runs.Add(1)
		<-ctx.Done() // the caller left; the work is done all the same
		return "done anyway", nil
	})
	cc := gtestutil.NewClient(t, a.addr)
	ctx := withID(ctxTimeout(t, 10*time.Second), "left")
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := testsvc.Call(short, cc, testsvc.Echo, "x"); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("first call: %v, want DeadlineExceeded", err)
	}
	var reply string
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if reply, err = testsvc.Call(ctx, cc, testsvc.Echo, "x"); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // the first execution may still be storing its outcome
	}
	if reply != "done anyway" || runs.Load() != 1 {
		t.Fatalf("resend got %q after %d runs, want the stored outcome of the one run", reply, runs.Load())
	}
}

package dedup

import (
	"context"
	"errors"
	"fmt"
	"github.com/grpcguard/grpcguard/internal/wire"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// dedupServer serves srv with the interceptor of NewServer(store,
// opts...) innermost after outer, and its dedup service, and returns its
// address.
func dedupServer(t testing.TB, srv *testsvc.Server, store Store, outer []grpc.UnaryServerInterceptor, opts ...Option) string {
	t.Helper()
	addr, _ := serveDedup(t, srv, store, outer, opts...)
	return addr
}

// serveDedup is dedupServer that also returns a function that stops the
// server at once (as a process that dies), also called when the test ends.
func serveDedup(t testing.TB, srv *testsvc.Server, store Store, outer []grpc.UnaryServerInterceptor, opts ...Option) (string, func()) {
	t.Helper()
	sd := NewServer(store, opts...)
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

func TestDedupNoIDRunsHandlerEachTime(t *testing.T) {
	srv := &testsvc.Server{}
	cc := newClient(t, dedupServer(t, srv, nil, nil))
	ctx := ctxTimeout(t, 5*time.Second)
	for range 2 {
		var hdr metadata.MD
		if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "a", grpc.Header(&hdr)); err != nil {
			t.Fatal(err)
		}
		if v := hdr.Get(AdvertHeader); len(v) != 0 {
			t.Fatalf("a call without id was advertised as deduplicated: %v", v)
		}
	}
	if n := srv.Runs(testsvc.Echo, "a"); n != 2 {
		t.Fatalf("runs = %d, want 2", n)
	}
}

func TestDedupSecondCallAnsweredFromStore(t *testing.T) {
	m := NewMetrics()
	var n atomic.Int32
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		grpc.SetHeader(ctx, metadata.Pairs("x-handler", "h"))
		grpc.SetTrailer(ctx, metadata.Pairs("x-handler-trailer", "t"))
		return fmt.Sprintf("%s #%d", req, n.Add(1)), nil
	}}
	cc := newClient(t, dedupServer(t, srv, nil, nil, WithMetrics(m)))
	ctx := withRequestID(ctxTimeout(t, 5*time.Second), "id-1;advertise")
	var replies []string
	for range 3 {
		var hdr, trl metadata.MD
		out, err := testsvc.Call(ctx, cc, testsvc.Echo, "a", grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil {
			t.Fatal(err)
		}
		replies = append(replies, out)
		if a, ok := wire.ParseAdvert(hdr); !ok || !strings.HasPrefix(a.Scope, "mem-") || a.TTL != DefaultTTL {
			t.Fatalf("header %v: want a AdvertHeader with a memory scope and the default TTL", hdr)
		}
		if hdr.Get("x-handler")[0] != "h" || len(trl.Get("x-handler-trailer")) != 1 {
			t.Fatalf("handler metadata not replayed: header %v trailer %v", hdr, trl)
		}
	}
	if replies[0] != "a #1" || replies[1] != replies[0] || replies[2] != replies[0] {
		t.Fatalf("replies %q: want the first outcome three times", replies)
	}
	if got := srv.Runs(testsvc.Echo, "a"); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
	if e, a := testutil.ToFloat64(m.executions), testutil.ToFloat64(m.answered); e != 1 || a != 2 {
		t.Fatalf("executions %v answered %v, want 1 and 2", e, a)
	}
	// Another id runs again.
	// Without "advertise" the response carries no AdvertHeader: only the
	// handler's own header.
	var hdr metadata.MD
	if out, err := testsvc.Call(withRequestID(ctxTimeout(t, 5*time.Second), "id-2"), cc, testsvc.Echo, "a", grpc.Header(&hdr)); err != nil || out != "a #2" {
		t.Fatalf("new id: %q, %v", out, err)
	}
	if len(hdr.Get(AdvertHeader)) != 0 || hdr.Get("x-handler")[0] != "h" {
		t.Fatalf("header %v: want the handler's and no AdvertHeader (not asked)", hdr)
	}
}

func TestDedupDuplicateWaitsForRunningCall(t *testing.T) {
	m := NewMetrics()
	started := make(chan struct{}, 4)
	release := make(chan struct{})
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		started <- struct{}{}
		<-release
		return "done " + req, nil
	}}
	store, _ := NewMemoryStore(MemoryStoreConfig{})
	cc := newClient(t, dedupServer(t, srv, store, nil, WithMetrics(m)))
	ctx := withRequestID(ctxTimeout(t, 10*time.Second), "wait-id")
	first := make(chan error, 1)
	go func() { _, err := testsvc.Call(ctx, cc, testsvc.Echo, "w"); first <- err }()
	<-started

	second := make(chan string, 1)
	go func() {
		out, err := testsvc.Call(ctx, cc, testsvc.Echo, "w")
		if err != nil {
			out = err.Error()
		}
		second <- out
	}()
	waitFor(t, 5*time.Second, "the duplicate to wait", func() bool { return hasWaiter(store, "wait-id") })
	// A duplicate whose caller gives up first returns its own deadline, and
	// the handler is not run for it.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := testsvc.Call(short, cc, testsvc.Echo, "w"); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("duplicate with a short deadline: %v, want DeadlineExceeded", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if out := <-second; out != "done w" {
		t.Fatalf("duplicate got %q, want the first outcome", out)
	}
	if got := srv.Runs(testsvc.Echo, "w"); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
	// The short duplicate may still be waiting on the server when the
	// outcome arrives (its deadline reaches the server a little later than
	// it ends the call for the client), and is then counted too.
	if w := testutil.ToFloat64(m.waited); w < 1 || w > 2 {
		t.Fatalf("waited = %v, want 1 or 2", w)
	}
}

// hasWaiter reports whether a call waits on key in s.
func hasWaiter(s *MemoryStore, key string) bool {
	sh, h := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := sh.claim(key, h, math.MinInt64)
	return c != nil && c.done != nil
}

func TestDedupSameIDDifferentRequestRefused(t *testing.T) {
	m := NewMetrics()
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		return "secret reply to " + req, nil
	}}
	cc := newClient(t, dedupServer(t, srv, nil, nil, WithMetrics(m)))
	ctx := withRequestID(ctxTimeout(t, 5*time.Second), "shared-id")
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "alice's payment"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ method, req string }{
		{testsvc.Echo, "mallory's payment"}, // other message
		{testsvc.Put, "alice's payment"},    // other method, same message
	} {
		out, err := testsvc.Call(ctx, cc, c.method, c.req)
		if status.Code(err) != codes.AlreadyExists || out != "" {
			t.Fatalf("%s %q with a reused id: %q, %v; want AlreadyExists and no reply", c.method, c.req, out, err)
		}
		if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "alice") {
			t.Fatalf("refusal leaks the first outcome: %v", err)
		}
		if srv.Runs(c.method, c.req) != 0 {
			t.Fatalf("%s %q ran", c.method, c.req)
		}
	}
	if c := testutil.ToFloat64(m.conflicts); c != 2 {
		t.Fatalf("conflicts = %v, want 2", c)
	}
}

func TestDedupErrorOutcomeStoredWithDetails(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		grpc.SetTrailer(ctx, metadata.Pairs("x-why", "stock"))
		st, _ := status.New(codes.FailedPrecondition, "out of stock").WithDetails(&errdetails.ErrorInfo{Reason: "STOCK"})
		return "", st.Err()
	}}
	cc := newClient(t, dedupServer(t, srv, nil, nil))
	ctx := withRequestID(ctxTimeout(t, 5*time.Second), "err-id")
	for i := range 2 {
		var trl metadata.MD
		_, err := testsvc.Call(ctx, cc, testsvc.Echo, "x", grpc.Trailer(&trl))
		st := status.Convert(err)
		if st.Code() != codes.FailedPrecondition || st.Message() != "out of stock" || len(st.Details()) != 1 {
			t.Fatalf("call %d: %v (details %v), want the handler's error with its details", i, err, st.Details())
		}
		if len(trl.Get("x-why")) != 1 {
			t.Fatalf("call %d: trailer %v lacks the handler's trailer", i, trl)
		}
	}
	if got := srv.Runs(testsvc.Echo, "x"); got != 1 {
		t.Fatalf("handler ran %d times, want 1: an error is an outcome too", got)
	}
}

func TestDedupNotExecutedRunsAgain(t *testing.T) {
	m := NewMetrics()
	var n atomic.Int32
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if n.Add(1) == 1 {
			return "", NotExecuted(status.Error(codes.Unavailable, "database unreachable, nothing written"))
		}
		return "ok", nil
	}}
	cc := newClient(t, dedupServer(t, srv, nil, nil, WithMetrics(m)))
	ctx := withRequestID(ctxTimeout(t, 5*time.Second), "again-id")
	_, err := testsvc.Call(ctx, cc, testsvc.Echo, "x")
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "database unreachable, nothing written" {
		t.Fatalf("first call: %v, want the handler's own status, unwrapped", err)
	}
	if out, err := testsvc.Call(ctx, cc, testsvc.Echo, "x"); err != nil || out != "ok" {
		t.Fatalf("second call: %q, %v; want the handler to run again", out, err)
	}
	if out, err := testsvc.Call(ctx, cc, testsvc.Echo, "x"); err != nil || out != "ok" || n.Load() != 2 {
		t.Fatalf("third call: %q, %v after %d runs; want the stored outcome of the second", out, err, n.Load())
	}
	if r := testutil.ToFloat64(m.released); r != 1 {
		t.Fatalf("released = %v, want 1", r)
	}
}

func TestDedupPanicReleasesClaim(t *testing.T) {
	var n atomic.Int32
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if n.Add(1) == 1 {
			panic("handler bug")
		}
		return "ok", nil
	}}
	recoverOuter := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = status.Errorf(codes.Internal, "panic: %v", r)
			}
		}()
		return h(ctx, req)
	}
	cc := newClient(t, dedupServer(t, srv, nil, []grpc.UnaryServerInterceptor{recoverOuter}))
	ctx := withRequestID(ctxTimeout(t, 5*time.Second), "panic-id")
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "x"); status.Code(err) != codes.Internal {
		t.Fatalf("first call: %v, want Internal from the recovery", err)
	}
	if out, err := testsvc.Call(ctx, cc, testsvc.Echo, "x"); err != nil || out != "ok" {
		t.Fatalf("after a panic: %q, %v; want the claim released and the handler run again", out, err)
	}
}

func TestDedupKeyScopesIDsByCaller(t *testing.T) {
	srv := &testsvc.Server{}
	byUser := WithKey(func(ctx context.Context, id string) (string, error) {
		u := metadata.ValueFromIncomingContext(ctx, "x-user")
		if len(u) != 1 {
			return "", status.Error(codes.Unauthenticated, "who are you")
		}
		return u[0] + "/" + id, nil
	})
	cc := newClient(t, dedupServer(t, srv, nil, nil, byUser))
	ctx := withRequestID(ctxTimeout(t, 5*time.Second), "same-id")
	as := func(u string) context.Context { return metadata.AppendToOutgoingContext(ctx, "x-user", u) }
	for _, u := range []string{"alice", "bob", "alice"} {
		if _, err := testsvc.Call(as(u), cc, testsvc.Echo, "pay"); err != nil {
			t.Fatal(err)
		}
	}
	if got := srv.Runs(testsvc.Echo, "pay"); got != 2 {
		t.Fatalf("runs = %d, want 2: one per caller, whatever the id", got)
	}
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "pay"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("key function error: %v, want its status", err)
	}
}

func TestDedupInvalidIDAndOptions(t *testing.T) {
	srv := &testsvc.Server{}
	cc := newClient(t, dedupServer(t, srv, nil, nil))
	ctx := ctxTimeout(t, 5*time.Second)
	for _, md := range []metadata.MD{
		metadata.Pairs(RequestIDHeader, strings.Repeat("x", wire.MaxRequestID+1)),
		metadata.Pairs(RequestIDHeader, "a", RequestIDHeader, "b"),
		metadata.Pairs(RequestIDHeader, ";advertise"),
		metadata.Pairs(RequestIDHeader, "a;resend-scope=x"),
		metadata.Pairs(RequestIDHeader, "a;resend-age-ms=-1"),
		metadata.Pairs(RequestIDHeader, "a;resend-age-ms=x"),
		metadata.Pairs(RequestIDHeader, "a;resend-age-us=-1"),
		metadata.Pairs(RequestIDHeader, "a;resend-age-us=1.5"),
		metadata.Pairs(RequestIDHeader, "order;1"), // an application's id with ';'
		metadata.Pairs(RequestIDHeader, "a;"),
	} {
		if _, err := testsvc.Call(metadata.NewOutgoingContext(ctx, md), cc, testsvc.Echo, "x"); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("%v: %v, want InvalidArgument", md, err)
		}
	}
	bad := newClient(t, dedupServer(t, srv, nil, nil, WithTTL(time.Millisecond), WithKey(nil)))
	_, err := testsvc.Call(withRequestID(ctx, "a"), bad, testsvc.Echo, "x")
	want := "grpcguard: invalid option: WithTTL(1ms): must be between 1s and 24h\ngrpcguard: invalid option: WithKey(nil): must not be nil"
	if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != want {
		t.Fatalf("invalid options: %v, want Internal %q", err, want)
	}
	if srv.Calls() != 0 {
		t.Fatalf("the handler ran %d times", srv.Calls())
	}
}

func TestDedupStreamsNotDeduplicated(t *testing.T) {
	srv := &testsvc.Server{}
	addr := startServer(t, srv, grpc.ChainUnaryInterceptor(UnaryServerInterceptor(nil)))
	cc := newClient(t, addr)
	ctx := withRequestID(ctxTimeout(t, 5*time.Second), "stream-id")
	for range 2 {
		s, err := cc.NewStream(ctx, testsvc.WatchDesc, testsvc.Watch)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SendMsg(wrapperspb.String("w")); err != nil {
			t.Fatal(err)
		}
		s.CloseSend()
		for {
			if err := s.RecvMsg(new(wrapperspb.StringValue)); err != nil {
				break
			}
		}
	}
	if got := srv.Runs(testsvc.Watch, "w"); got != 2 {
		t.Fatalf("stream ran %d times, want 2: streams are not deduplicated", got)
	}
}

func TestDedupResendRules(t *testing.T) {
	m := NewMetrics()
	store, err := NewMemoryStore(MemoryStoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	srv := &testsvc.Server{}
	cc := newClient(t, dedupServer(t, srv, store, nil, WithMetrics(m), WithTTL(time.Minute)))
	ctx := ctxTimeout(t, 5*time.Second)
	resend := func(id, v string) error {
		_, err := testsvc.Call(withRequestID(ctx, id+";"+v), cc, testsvc.Echo, id)
		return err
	}
	// An id this store never saw, under another store's scope: the first
	// attempt may have run there.
	if err := resend("r1", "resend-scope=mem-0000000000000000;resend-age-us=10000"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("other scope: %v, want FailedPrecondition", err)
	}
	// Older than the store keeps ids.
	if err := resend("r2", "resend-scope="+store.Scope()+";resend-age-us=60000000"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("too old: %v, want FailedPrecondition", err)
	}
	// An age in milliseconds, from a client that stamped it before the
	// resend waited for a connection: not trusted for an unknown id.
	if err := resend("r4", "resend-scope="+store.Scope()+";resend-age-ms=10"); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "cannot be trusted") {
		t.Fatalf("age in ms: %v, want FailedPrecondition", err)
	}
	if srv.Calls() != 0 || testutil.ToFloat64(m.refused) != 3 {
		t.Fatalf("refused resends ran (%d calls) or were not counted (%v)", srv.Calls(), testutil.ToFloat64(m.refused))
	}
	// The refused ids were not kept: the same id may run normally.
	if _, err := testsvc.Call(withRequestID(ctx, "r1"), cc, testsvc.Echo, "r1"); err != nil {
		t.Fatal(err)
	}
	// This store's scope, or declared by hand (no scope), within the
	// retention: an unknown id never ran here, so it runs; a known one is
	// answered.
	for _, v := range []string{"resend-scope=" + store.Scope() + ";resend-age-us=10000", "resend-scope=;resend-age-us=10000", "resend-age-us=10000"} {
		if err := resend("r3"+v, v); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
	}
	if err := resend("r1", "resend-scope=mem-0000000000000000;resend-age-us=10000"); err != nil {
		t.Fatalf("known id resent under a wrong scope guess: %v, want its outcome", err)
	}
	// A known id is answered whatever the age says: its outcome is here.
	if err := resend("r1", "resend-age-ms=10"); err != nil {
		t.Fatalf("known id resent with an age in ms: %v, want its outcome", err)
	}
	if got := srv.Runs(testsvc.Echo, "r1"); got != 1 {
		t.Fatalf("r1 ran %d times", got)
	}
}

// failingStore is a Store whose every operation fails, as a store that
// cannot be reached does.
type failingStore struct{ MemoryStore }

var errUnreachable = errors.New("store unreachable")

func (*failingStore) Claim(context.Context, string, []byte, time.Duration) ([]byte, string, error) {
	return nil, "", errUnreachable
}

func TestDedupStoreDownFailsClosedOrOpen(t *testing.T) {
	for _, open := range []bool{false, true} {
		t.Run(fmt.Sprint("open=", open), func(t *testing.T) {
			m := NewMetrics()
			opts := []Option{WithMetrics(m)}
			if open {
				opts = append(opts, WithFailOpen())
			}
			srv := &testsvc.Server{}
			cc := newClient(t, dedupServer(t, srv, &failingStore{}, nil, opts...))
			var hdr metadata.MD
			_, err := testsvc.Call(withRequestID(ctxTimeout(t, 5*time.Second), "x;advertise"), cc, testsvc.Echo, "x", grpc.Header(&hdr))
			if open {
				if err != nil || srv.Calls() != 1 || len(hdr.Get(AdvertHeader)) != 0 {
					t.Fatalf("fail open: %v, %d runs, header %v; want the call run without dedup and no advert", err, srv.Calls(), hdr)
				}
			} else {
				if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "store unreachable") || srv.Calls() != 0 {
					t.Fatalf("fail closed: %v, %d runs; want Unavailable naming the store error, nothing run", err, srv.Calls())
				}
			}
			if e := testutil.ToFloat64(m.storeErrBy[opClaim]); e != 1 {
				t.Fatalf("store errors = %v, want 1", e)
			}
		})
	}
}

// TestDedupLostReplyResentRunsOnce: the proxy forwards the call and resets
// the client before the reply; the server ran it. A resend with the same id,
// naming the scope the replica advertised, gets the first outcome.
func TestDedupLostReplyResentRunsOnce(t *testing.T) {
	var n atomic.Int32
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		return fmt.Sprintf("%s #%d", req, n.Add(1)), nil
	}}
	addr := dedupServer(t, srv, nil, nil)
	ctx := ctxTimeout(t, 5*time.Second)
	var hdr metadata.MD
	direct := newClient(t, addr)
	if _, err := testsvc.Call(withRequestID(ctx, "warm;advertise"), direct, testsvc.Get, "warm", grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	adv, ok := wire.ParseAdvert(hdr)
	if !ok {
		t.Fatalf("no advert in %v", hdr)
	}
	p := startProxy(t, addr, faultproxy.Config{Mode: faultproxy.LostReply})
	cc := newClient(t, p.Addr())
	call := withRequestID(ctx, "lost")
	_, err := testsvc.Call(call, cc, testsvc.Echo, "pay")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("lost reply: %v, want Unavailable", err)
	}
	waitFor(t, 5*time.Second, "the lost reply", func() bool { return p.Stats().LostReplies == 1 })
	if srv.Runs(testsvc.Echo, "pay") != 1 {
		t.Fatal("the server did not run the call whose reply was lost")
	}
	p.SetMode(faultproxy.Pass)
	out, err := testsvc.Call(withRequestID(ctx, "lost;resend-scope="+adv.Scope+";resend-age-us=50000"), cc, testsvc.Echo, "pay")
	if err != nil || out != "pay #2" { // #1 was the warm-up call
		t.Fatalf("resend: %q, %v; want the first outcome", out, err)
	}
	if got := srv.Runs(testsvc.Echo, "pay"); got != 1 {
		t.Fatalf("ran %d times, want 1", got)
	}
}

// TestDedupConcurrentDuplicatesRunOnce: many copies of one id at once run
// the handler once and all get its outcome.
func TestDedupConcurrentDuplicatesRunOnce(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		time.Sleep(20 * time.Millisecond)
		return "r-" + req, nil
	}}
	cc := newClient(t, dedupServer(t, srv, nil, nil))
	ctx := ctxTimeout(t, 10*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprint("c", i%4)
			out, err := testsvc.Call(withRequestID(ctx, id), cc, testsvc.Echo, id)
			if err == nil && out != "r-"+id {
				err = fmt.Errorf("got %q", out)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range 4 {
		if got := srv.Runs(testsvc.Echo, fmt.Sprint("c", i)); got != 1 {
			t.Fatalf("c%d ran %d times, want 1", i, got)
		}
	}
}

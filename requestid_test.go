package grpcguard

import (
	"context"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/wire"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// idLog records, on the server, the request id and attempt number of every
// attempt that reached it.
type idLog struct {
	mu       sync.Mutex
	attempts []idAttempt
}

type idAttempt struct {
	method, id string
	previous   int
}

func (l *idLog) record(ctx context.Context, method string) {
	id := ""
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDHeader); len(v) == 1 {
		id, _, _ = strings.Cut(v[0], ";") // the id without its parameters
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.attempts = append(l.attempts, idAttempt{method, id, previousAttempts(ctx)})
}

func (l *idLog) all() []idAttempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]idAttempt(nil), l.attempts...)
}

func (l *idLog) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	l.record(ctx, info.FullMethod)
	return h(ctx, req)
}

func (l *idLog) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	l.record(ss.Context(), info.FullMethod)
	return h(srv, ss)
}

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestRequestIDSameOnEveryAttemptNewPerCall(t *testing.T) {
	var log idLog
	var n atomic.Int32
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req == "retry" && previousAttempts(ctx) == 0 {
			return "", status.Error(codes.Unavailable, "try again")
		}
		if req == "hedge" && n.Add(1) == 1 {
			time.Sleep(300 * time.Millisecond) // the original is slow: a hedge goes out
		}
		return req, nil
	}}
	addr := startServer(t, srv, grpc.ChainUnaryInterceptor(log.unary))
	cc := bundleClient(t, addr, WithRequestIDs(true), WithHedgeDelay(20*time.Millisecond), WithHedgeBudget(1), WithBackoff(time.Millisecond, time.Millisecond, 1))
	ctx := ctxTimeout(t, 5*time.Second)
	for _, req := range []string{"retry", "hedge", "plain", "plain"} {
		if _, err := testsvc.Call(ctx, cc, testsvc.Get, req); err != nil {
			t.Fatalf("%s: %v", req, err)
		}
	}
	at := log.all()
	if len(at) != 6 {
		t.Fatalf("attempts %+v: want 2 (retry) + 2 (hedge) + 1 + 1", at)
	}
	for _, a := range at {
		if !hexID.MatchString(a.id) {
			t.Fatalf("attempt %+v: id is not 32 hex digits", a)
		}
	}
	if at[0].id != at[1].id || at[1].previous != 1 {
		t.Fatalf("retry attempts %+v: want one id, second marked as a retry", at[:2])
	}
	if at[2].id != at[3].id {
		t.Fatalf("hedged attempts %+v: want one id", at[2:4])
	}
	seen := map[string]bool{}
	for _, i := range []int{0, 2, 4, 5} {
		if seen[at[i].id] {
			t.Fatalf("calls share an id: %+v", at)
		}
		seen[at[i].id] = true
	}
}

// By default a call carries an id where it can matter: one call per method
// every 100ms, whose response teaches the client; then every call of a method
// whose server deduplicates it, and no other.
func TestRequestIDsWhereTheyMatter(t *testing.T) {
	var plainLog, dedupLog idLog
	plainAddr := startServer(t, &testsvc.Server{}, grpc.ChainUnaryInterceptor(plainLog.unary))
	dedupAddr := dedupServer(t, &testsvc.Server{}, nil, []grpc.UnaryServerInterceptor{dedupLog.unary})
	ctx := ctxTimeout(t, 5*time.Second)
	for _, tc := range []struct {
		addr string
		log  *idLog
		want func(i int) bool // whether call i carries an id
	}{
		{plainAddr, &plainLog, func(i int) bool { return i == 0 }},
		{dedupAddr, &dedupLog, func(int) bool { return true }},
	} {
		cc := bundleClient(t, tc.addr)
		for range 5 { // well within 100ms: only the first is a sample
			if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "x"); err != nil {
				t.Fatal(err)
			}
		}
		for i, a := range tc.log.all() {
			if got := a.id != ""; got != tc.want(i) {
				t.Errorf("%s, call %d: id %q, want one: %v", tc.addr, i, a.id, tc.want(i))
			}
		}
	}
}

func TestRequestIDsOffAndCallersOwn(t *testing.T) {
	var log idLog
	addr := startServer(t, &testsvc.Server{}, grpc.ChainUnaryInterceptor(log.unary), grpc.ChainStreamInterceptor(log.stream))
	ctx := ctxTimeout(t, 5*time.Second)

	off := bundleClient(t, addr, WithRequestIDs(false))
	on := bundleClient(t, addr)
	if _, err := testsvc.Call(ctx, off, testsvc.Echo, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := testsvc.Call(withRequestID(ctx, "callers-own"), on, testsvc.Echo, "a"); err != nil {
		t.Fatal(err)
	}
	s, err := on.NewStream(ctx, testsvc.WatchDesc, testsvc.Watch)
	if err != nil {
		t.Fatal(err)
	}
	s.CloseSend()
	for s.RecvMsg(new(any)) == nil {
	}
	at := log.all()
	if len(at) != 3 {
		t.Fatalf("attempts %+v, want 3", at)
	}
	if at[0].id != "" {
		t.Fatalf("id sent with WithRequestIDs(false): %+v", at[0])
	}
	if at[1].id != "callers-own" {
		t.Fatalf("caller's id replaced: %+v", at[1])
	}
	if at[2].method != testsvc.Watch || at[2].id != "" {
		t.Fatalf("stream: %+v, want no id: streams are not deduplicated", at[2])
	}
}

// TestDedupKnowledgeLearnedPerReplica: the client learns from its own
// responses, per method and replica, that the server deduplicates, and
// unlearns it on a successful response without DedupHeader.
func TestDedupKnowledgeLearnedPerReplica(t *testing.T) {
	store, _ := NewMemoryStore(MemoryStoreConfig{})
	failing := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req == "fail" {
			return "", status.Error(codes.FailedPrecondition, "no")
		}
		return req, nil
	}}
	dedupAddr := dedupServer(t, failing, store, nil)
	plainAddr := startServer(t, &testsvc.Server{})
	ctx := ctxTimeout(t, 5*time.Second)

	k := newDedupKnowledge()
	ids := newRequestIDs(defaultConfig(), &clientRuntime{dedup: k})
	dial := func(addr string) *grpc.ClientConn {
		return newClient(t, addr, grpc.WithChainUnaryInterceptor(ids.unary))
	}
	tcp := func(addr string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", addr); return a }

	if _, err := testsvc.Call(ctx, dial(plainAddr), testsvc.Get, "a"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := k.lookup(testsvc.Get, tcp(plainAddr), nanotime()); ok {
		t.Fatal("learned dedup from a server that does not advertise it")
	}
	// Observation is sampled, once per dedupObserveEvery per method.
	var scope string
	var window int64
	var ok bool
	waitFor(t, time.Second, "the client to learn", func() bool {
		if _, err := testsvc.Call(ctx, dial(dedupAddr), testsvc.Echo, "a"); err != nil {
			t.Fatal(err)
		}
		scope, window, ok = k.lookup(testsvc.Echo, tcp(dedupAddr), nanotime())
		return ok
	})
	if scope != store.Scope() || window != int64(DefaultDedupTTL) {
		t.Fatalf("after a deduplicated call: %q %v %v, want the store's scope and TTL", scope, window, ok)
	}
	if _, _, ok := k.lookup(testsvc.Put, tcp(dedupAddr), nanotime()); ok {
		t.Fatal("learned a method never called")
	}
	if _, _, ok := k.lookup(testsvc.Echo, tcp(plainAddr), nanotime()); ok {
		t.Fatal("learned for a replica that never advertised")
	}
	// An error response carries DedupHeader in its trailer: learned too.
	if _, err := testsvc.Call(ctx, dial(dedupAddr), testsvc.Put, "fail"); status.Code(err) != codes.FailedPrecondition {
		t.Fatal(err)
	}
	if _, _, ok := k.lookup(testsvc.Put, tcp(dedupAddr), nanotime()); !ok {
		t.Fatal("not learned from an error response")
	}
	// A replica without dedup answers the method: denied for every replica.
	waitFor(t, time.Second, "the next observation", func() bool {
		_, err := testsvc.Call(ctx, dial(plainAddr), testsvc.Echo, "a")
		m, _ := k.methods.Load(testsvc.Echo)
		return err == nil && m.(*methodDedup).deniedUntil.Load() != 0
	})
	if _, _, ok := k.lookup(testsvc.Echo, tcp(dedupAddr), nanotime()); ok {
		t.Fatal("still covered after a response without DedupHeader")
	}
}

func TestDedupCovers(t *testing.T) {
	ms := int64(time.Millisecond)
	t0 := int64(time.Hour) // nanotime is positive; 0 means "never"
	a1 := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	a2 := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}
	adv := func(scope string) metadata.MD { return metadata.Pairs(DedupHeader, "scope="+scope+";ttl-ms=1000") }
	const m = "/p.S/M"

	k := newDedupKnowledge()
	cs := newClientState(defaultConfig(), &clientRuntime{dedup: k})
	var cover dedupCover
	if dedupCovers(cs, &dedupCover{}, m, a1, t0+0, t0+10*ms) {
		t.Fatal("covered with nothing learned or declared")
	}
	k.observe(m, a1, adv("s1"), nil, true, t0+0)
	k.observe(m, a2, adv("s2"), nil, true, t0+0)
	if !dedupCovers(cs, &cover, m, a1, t0+5*ms, t0+10*ms) || cover.scope != "s1" || cover.first != t0+5*ms {
		t.Fatalf("learned replica: cover %+v", cover)
	}
	// A second attempt that may have run on a replica with another store.
	if dedupCovers(cs, &cover, m, a2, t0+20*ms, t0+30*ms) {
		t.Fatal("covered although two attempts may have run under different stores")
	}
	// Outside the window (90% of the advertised retention, from the first
	// attempt that may have run).
	cover = dedupCover{}
	if dedupCovers(cs, &cover, m, a1, t0+0, t0+900*ms) {
		t.Fatal("covered outside the window")
	}
	// One address, two scopes (several processes behind it): denied.
	k.observe(m, a1, adv("s3"), nil, true, t0+100*ms)
	cover = dedupCover{}
	if dedupCovers(cs, &cover, m, a1, t0+100*ms, t0+110*ms) {
		t.Fatal("covered although one address showed two store scopes")
	}
	// An error response without the header proves nothing; an OK one denies.
	k.observe(m, a2, nil, nil, false, t0+200*ms)
	if !dedupCovers(cs, &dedupCover{}, m, a2, t0+200*ms, t0+210*ms) {
		t.Fatal("an error without DedupHeader revoked the knowledge")
	}
	k.observe(m, a2, nil, nil, true, t0+300*ms)
	if dedupCovers(cs, &dedupCover{}, m, a2, t0+300*ms, t0+310*ms) {
		t.Fatal("a success without DedupHeader did not revoke the knowledge")
	}

	// Declared by hand: any replica, no scope, the default TTL; only where
	// calls carry ids (DialOptions, which makes the knowledge).
	hand := standaloneState([]Option{WithServerDedup("/p.S/*")})
	if dedupCovers(hand, &dedupCover{}, m, nil, t0+0, t0+ms) {
		t.Fatal("covered by interceptors composed by hand, which send no request id")
	}
	decl := newClientState(mustConfig(t, WithServerDedup("/p.S/*")), &clientRuntime{dedup: newDedupKnowledge()})
	cover = dedupCover{}
	if !dedupCovers(decl, &cover, m, nil, t0+0, t0+ms) || cover.scope != "" {
		t.Fatalf("declared: %+v", cover)
	}
	if dedupCovers(decl, &dedupCover{}, "/p.T/M", nil, t0+0, t0+ms) {
		t.Fatal("declared for another service")
	}
	off := newClientState(mustConfig(t, WithServerDedup("/p.S/*"), WithRequestIDs(false)), &clientRuntime{dedup: newDedupKnowledge()})
	if dedupCovers(off, &dedupCover{}, m, nil, t0+0, t0+ms) {
		t.Fatal("covered without request ids")
	}
	// The resend's id leaves the outgoing metadata: its credentials write
	// it when grpc builds the headers, keeping the id and its other
	// parameters, replacing an earlier resend's, with an age rounded up to
	// the microsecond, after the caller's own credentials' metadata.
	idCtx := metadata.AppendToOutgoingContext(context.Background(), RequestIDHeader, "abc;advertise;resend-age-us=1")
	first := nanotime() - 1500*int64(time.Millisecond) - 1
	got, opt := (&dedupCover{used: true, scope: "s1", first: first}).resendAttempt(idCtx,
		[]grpc.CallOption{grpc.PerRPCCredentials(staticCreds{"authorization": "Bearer x"})})
	if v := metadata.ValueFromOutgoingContext(got, RequestIDHeader); len(v) != 0 {
		t.Fatalf("the resend's id stayed in its outgoing metadata: %v", v)
	}
	md, err := opt.(grpc.PerRPCCredsCallOption).Creds.GetRequestMetadata(context.Background())
	if err != nil || md["authorization"] != "Bearer x" {
		t.Fatalf("resend credentials: %v, %v; want the caller's kept", md, err)
	}
	id, age, _ := strings.Cut(md[RequestIDHeader], ";resend-scope=s1;resend-age-us=")
	if us, err := strconv.ParseInt(age, 10, 64); id != "abc;advertise" || err != nil || us < 1500001 || us > 1500000+5e6 {
		t.Fatalf("resend id %q: want abc;advertise, scope s1 and an age of 1.500001s or a little more", md[RequestIDHeader])
	}
	if p := wire.ResendParams("s", 1, ""); p != ";resend-scope=s;resend-age-us=1" {
		t.Fatalf("1ns is %q, want 1µs: rounded up", p)
	}
	if _, err := newConfig([]Option{WithServerDedup("nope")}); err == nil ||
		err.Error() != `grpcguard: invalid option: WithServerDedup("nope"): must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"` {
		t.Fatalf("invalid WithServerDedup: %v", err)
	}
}

// staticCreds are per-RPC credentials of fixed metadata, as a caller's own.
type staticCreds map[string]string

func (c staticCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return c, nil
}
func (staticCreds) RequireTransportSecurity() bool { return false }

// dedupCovers is what the after-failure step asks of deduplication for an
// attempt of method that began at start, ended on peer and may have run.
func dedupCovers(cs *clientState, cover *dedupCover, method string, peer net.Addr, start, now int64) bool {
	scope, window, ok := cs.dedupScope(method, peer, now)
	cover.record(scope, window, ok, start)
	return cover.covers(now)
}

package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// hedgedClient dials addr through a Dialer, with the hedging interceptor
// outside the Dialer's, as the bundle chains them.
func hedgedClient(t testing.TB, addr string, opts ...Option) (*grpc.ClientConn, *Metrics) {
	t.Helper()
	m := NewMetrics()
	opts = append([]Option{WithMetrics(m)}, opts...)
	d := NewDialer(opts...)
	t.Cleanup(func() { d.Close() })
	cc := newClient(t, addr,
		grpc.WithContextDialer(d.DialContext),
		grpc.WithDisableRetry(),
		grpc.WithChainUnaryInterceptor(UnaryClientHedge(opts...), d.UnaryClientInterceptor()))
	return cc, m
}

// attemptNumber is the grpc-previous-rpc-attempts a server call carries.
func hedgeCount(m *Metrics, method string) (hedges, wins, throttled int) {
	s, n := splitMethod(method)
	return int(testutil.ToFloat64(m.hedges.WithLabelValues(s, n))),
		int(testutil.ToFloat64(m.hedgeWins.WithLabelValues(s, n))),
		int(testutil.ToFloat64(m.hedgeThrottled.WithLabelValues(s, n)))
}

// waitClosed fails the test if ch is not closed within d.
func waitClosed(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

func TestHedgeBeatsSlowAttemptAndCancelsLoser(t *testing.T) {
	cancelled := make(chan struct{})
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if previousAttempts(ctx) == 0 {
			if err := sleep(ctx, 2*time.Second); err != nil {
				close(cancelled)
				return "", err
			}
		}
		return req + "-" + strconv.Itoa(previousAttempts(ctx)), nil
	}}
	cc, m := hedgedClient(t, startServer(t, srv), WithHedgeDelay(30*time.Millisecond))

	start := time.Now()
	got, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a")
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if got != "a-1" {
		t.Errorf("reply %q, want the hedge's %q", got, "a-1")
	}
	if elapsed > 500*time.Millisecond {
		t.Errorf("call took %v, want under 500ms", elapsed)
	}
	waitClosed(t, cancelled, 5*time.Second, "the server to see the losing attempt cancelled")
	if got := srv.PreviousAttempts(); fmt.Sprint(got) != "[0 1]" {
		t.Errorf("server saw grpc-previous-rpc-attempts %v, want [0 1]", got)
	}
	if h, w, _ := hedgeCount(m, testsvc.Get); h != 1 || w != 1 {
		t.Errorf("hedges %d, wins %d; want 1, 1", h, w)
	}
}

func TestHedgeNonIdempotentSentOnce(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		time.Sleep(150 * time.Millisecond) // the scenario: slower than the hedge delay
		return req, nil
	}}
	cc, m := hedgedClient(t, startServer(t, srv), WithHedgeDelay(5*time.Millisecond))
	for i := range 3 {
		if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "e"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.MaxRuns(testsvc.Echo); n != 1 {
		t.Errorf("an Echo request ran %d times, want 1", n)
	}
	if n := srv.Calls(); n != 3 {
		t.Errorf("server got %d calls, want 3", n)
	}
	if h, _, _ := hedgeCount(m, testsvc.Echo); h != 0 {
		t.Errorf("%d hedges of Echo", h)
	}
}

func TestHedgeFatalCodeEndsCall(t *testing.T) {
	cancelled := make(chan struct{})
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if previousAttempts(ctx) == 0 {
			<-ctx.Done() // the original hangs until cancelled
			close(cancelled)
			return "", ctx.Err()
		}
		return "", status.Error(codes.PermissionDenied, "no")
	}}
	cc, _ := hedgedClient(t, startServer(t, srv), WithHedgeDelay(20*time.Millisecond))
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "f")
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("got %v, want PermissionDenied", err)
	}
	waitClosed(t, cancelled, 5*time.Second, "the original attempt cancelled")
}

func TestHedgeFatalCodeOfOriginalEndsCall(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		return "", status.Error(codes.NotFound, "gone")
	}}
	cc, _ := hedgedClient(t, startServer(t, srv), WithHedgeDelay(time.Second))
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "g")
	if status.Code(err) != codes.NotFound {
		t.Fatalf("got %v, want NotFound", err)
	}
	if n := srv.Calls(); n != 1 {
		t.Errorf("%d attempts, want 1", n)
	}
}

func TestHedgeNonFatalCodeHedgesAtOnce(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req == "flaky" && previousAttempts(ctx) < 2 {
			return "", status.Error(codes.Unavailable, "busy")
		}
		return req + "-" + strconv.Itoa(previousAttempts(ctx)), nil
	}}
	// The delay is far longer than the test: only the failures can start
	// the hedges.
	cc, m := hedgedClient(t, startServer(t, srv), WithHedgeDelay(time.Hour))
	got, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "flaky")
	if err != nil {
		t.Fatal(err)
	}
	if got != "flaky-2" {
		t.Errorf("reply %q, want flaky-2", got)
	}
	if n := srv.Runs(testsvc.Get, "flaky"); n != 3 {
		t.Errorf("%d attempts, want 3", n)
	}
	if h, w, _ := hedgeCount(m, testsvc.Get); h != 2 || w != 1 {
		t.Errorf("hedges %d, wins %d; want 2, 1", h, w)
	}
}

func TestHedgeAllNonFatalReturnsLastError(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req == "down" {
			return "", status.Errorf(codes.Unavailable, "attempt %d", previousAttempts(ctx))
		}
		return req, nil
	}}
	cc, _ := hedgedClient(t, startServer(t, srv), WithHedgeDelay(time.Hour))
	var trailer metadata.MD
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "down", grpc.Trailer(&trailer))
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "attempt 2" {
		t.Fatalf("got %v, want Unavailable from attempt 2", err)
	}
	if n := srv.Runs(testsvc.Get, "down"); n != 3 {
		t.Errorf("%d attempts, want 3", n)
	}
}

func TestHedgePushbackStop(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req == "stop" {
			grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", "-1"))
			return "", status.Error(codes.Unavailable, "go away")
		}
		return req, nil
	}}
	cc, _ := hedgedClient(t, startServer(t, srv), WithHedgeDelay(time.Hour))
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "stop")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
	if n := srv.Runs(testsvc.Get, "stop"); n != 1 {
		t.Errorf("%d attempts after a stop pushback, want 1", n)
	}
}

func TestHedgePushbackDelaysNextHedge(t *testing.T) {
	const pushback = 150 * time.Millisecond
	var mu sync.Mutex
	var seen []time.Time
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req != "later" {
			return req, nil
		}
		mu.Lock()
		seen = append(seen, time.Now())
		mu.Unlock()
		if previousAttempts(ctx) == 0 {
			grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", strconv.Itoa(int(pushback/time.Millisecond))))
			return "", status.Error(codes.Unavailable, "later")
		}
		return "ok", nil
	}}
	cc, _ := hedgedClient(t, startServer(t, srv), WithHedgeDelay(time.Hour))
	got, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "later")
	if err != nil || got != "ok" {
		t.Fatalf("got %q, %v", got, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("%d attempts, want 2", len(seen))
	}
	if gap := seen[1].Sub(seen[0]); gap < pushback {
		t.Errorf("hedge sent %v after the pushback of %v", gap, pushback)
	}
}

func TestHedgeCopiesWinnersHeaderTrailerPeer(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		n := strconv.Itoa(previousAttempts(ctx))
		grpc.SetHeader(ctx, metadata.Pairs("attempt", n))
		grpc.SetTrailer(ctx, metadata.Pairs("attempt-trailer", n))
		if n == "0" {
			<-ctx.Done()
			return "", ctx.Err()
		}
		return req, nil
	}}
	addr := startServer(t, srv)
	cc, _ := hedgedClient(t, addr, WithHedgeDelay(10*time.Millisecond))
	var header, trailer metadata.MD
	var p peer.Peer
	finished := 0
	var finishErr error
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "h",
		grpc.Header(&header), grpc.Trailer(&trailer), grpc.Peer(&p),
		grpc.OnFinish(func(err error) { finished++; finishErr = err }))
	if err != nil {
		t.Fatal(err)
	}
	if got := header.Get("attempt"); fmt.Sprint(got) != "[1]" {
		t.Errorf("header attempt %v, want [1]", got)
	}
	if got := trailer.Get("attempt-trailer"); fmt.Sprint(got) != "[1]" {
		t.Errorf("trailer attempt %v, want [1]", got)
	}
	if p.Addr == nil || p.Addr.String() != addr {
		t.Errorf("peer %v, want %s", p.Addr, addr)
	}
	if finished != 1 || finishErr != nil {
		t.Errorf("OnFinish called %d times with %v, want once with nil", finished, finishErr)
	}
}

func TestHedgeBudgetExhaustedSendsNoHedge(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		time.Sleep(50 * time.Millisecond) // the scenario: slower than the delay
		return req, nil
	}}
	cc, m := hedgedClient(t, startServer(t, srv), WithHedgeDelay(5*time.Millisecond),
		WithRetryBudget(DefaultBudgetRatio, 0, DefaultBudgetWindow), WithHedgeBudget(0)) // no floor, no hedge share
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "b"); err != nil {
		t.Fatal(err)
	}
	if h, _, th := hedgeCount(m, testsvc.Get); h != 0 || th != 1 {
		t.Errorf("hedges %d, throttled %d; want 0, 1", h, th)
	}
	if n := srv.Calls(); n != 1 {
		t.Errorf("%d attempts, want 1", n)
	}
}

func TestHedgePerCallOptions(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req != "fast" {
			time.Sleep(60 * time.Millisecond) // the scenario: slower than the delay
		}
		return req, nil
	}}
	cc, _ := hedgedClient(t, startServer(t, srv), WithHedgeDelay(5*time.Millisecond))
	call := func(req string, opts ...grpc.CallOption) {
		t.Helper()
		if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, req, opts...); err != nil {
			t.Fatal(err)
		}
	}
	call("off", WithHedgingDisabled())
	call("one", WithMaxAttempts(1))
	call("late", WithHedgeDelay(time.Hour))
	call("two", WithMaxAttempts(2))
	for req, want := range map[string]int{"off": 1, "one": 1, "late": 1, "two": 2} {
		waitFor(t, 5*time.Second, req+" attempts", func() bool { return srv.Runs(testsvc.Get, req) >= want })
		if n := srv.Runs(testsvc.Get, req); n != want {
			t.Errorf("%s: %d attempts, want %d", req, n, want)
		}
	}
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "bad", WithHedgeDelay(-1))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "WithHedgeDelay") {
		t.Errorf("invalid per-call option: %v", err)
	}
}

func TestHedgeInvalidOptionsFailEveryCall(t *testing.T) {
	icpt := UnaryClientHedge(WithMaxAttempts(0), WithHedgeBudget(2))
	invoked := false
	err := icpt(context.Background(), testsvc.Get, wrapperspb.String("x"), new(wrapperspb.StringValue), nil,
		func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			invoked = true
			return nil
		})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "WithMaxAttempts") ||
		!strings.Contains(err.Error(), "WithHedgeBudget") {
		t.Errorf("got %v, want InvalidArgument naming both options", err)
	}
	if invoked {
		t.Error("the call was sent")
	}
}

func TestHedgeCallerCancelStopsAttempts(t *testing.T) {
	var wg sync.WaitGroup
	wg.Add(2)
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		defer wg.Done()
		<-ctx.Done()
		return "", ctx.Err()
	}}
	cc, _ := hedgedClient(t, startServer(t, srv), WithHedgeDelay(5*time.Millisecond), WithMaxAttempts(2))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := testsvc.Call(ctx, cc, testsvc.Get, "c")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	waitClosed(t, done, 5*time.Second, "both attempts to end on the server")
}

// Beneath the hedging interceptor, each attempt carries the owner marker (so
// a retry interceptor passes it through) and grpc.Peer (so the attempt can be
// judged from its conn); its context carries nothing of grpcguard's, so RPCs
// nested inside an attempt are not mistaken for attempts.
func TestHedgeComposesWithDialer(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if previousAttempts(ctx) == 0 {
			<-ctx.Done()
			return "", ctx.Err()
		}
		return req, nil
	}}
	addr := startServer(t, srv)
	d := NewDialer()
	t.Cleanup(func() { d.Close() })
	var mu sync.Mutex
	seen, owned, peered := 0, 0, 0
	spy := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		mu.Lock()
		defer mu.Unlock()
		seen++
		if ownedAttempt(opts) {
			owned++
		}
		for _, o := range opts {
			if p, ok := o.(grpc.PeerCallOption); ok {
				if _, ours := p.PeerAddr.LocalAddr.(*connAddr); ours {
					peered++
				}
			}
		}
		return err
	}
	cc := newClient(t, addr, grpc.WithContextDialer(d.DialContext), grpc.WithDisableRetry(),
		grpc.WithChainUnaryInterceptor(UnaryClientHedge(WithHedgeDelay(10*time.Millisecond)), spy, d.UnaryClientInterceptor()))
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "d"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "both attempts to return", func() bool { mu.Lock(); defer mu.Unlock(); return seen == 2 })
	mu.Lock()
	defer mu.Unlock()
	if owned != 2 || peered != 2 {
		t.Errorf("of 2 attempts, %d carried the owner marker and %d a peer on a Dialer conn; want 2 and 2", owned, peered)
	}
}

func TestHedgePassThroughAllocatesNothing(t *testing.T) {
	noop := func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
		return finishAsGRPC(opts, nil)
	}
	req, reply := wrapperspb.String("x"), new(wrapperspb.StringValue)
	ctx := context.Background()
	opts := []grpc.CallOption{grpc.WaitForReady(true)}
	for name, tc := range map[string]struct {
		icpt   grpc.UnaryClientInterceptor
		method string
	}{
		"non-idempotent":   {UnaryClientHedge(), testsvc.Echo},
		"hedging disabled": {UnaryClientHedge(WithHedgingDisabled()), testsvc.Get},
		"one attempt":      {UnaryClientHedge(WithMaxAttempts(1)), testsvc.Get},
	} {
		tc.icpt(ctx, tc.method, req, reply, nil, noop, opts...) // fills the idempotency cache
		if n := testing.AllocsPerRun(1000, func() { tc.icpt(ctx, tc.method, req, reply, nil, noop, opts...) }); n != 0 {
			t.Errorf("%s: %v allocs per call, want 0", name, n)
		}
	}
}

func TestHedgeNonProtoReplyPassesThrough(t *testing.T) {
	icpt := UnaryClientHedge(WithHedgeDelay(time.Millisecond))
	var reply string
	calls := 0
	err := icpt(context.Background(), testsvc.Get, "req", &reply, nil,
		func(_ context.Context, _ string, _, r any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
			calls++
			if r != &reply {
				return errors.New("reply replaced")
			}
			return nil
		})
	if err != nil || calls != 1 {
		t.Errorf("err %v, %d calls; want nil, 1", err, calls)
	}
}

func TestHedgeDelayWindow(t *testing.T) {
	c := defaultConfig()
	var w latencyWindow
	for i := 1; i < hedgeWarmup; i++ {
		w.record(time.Duration(i)*time.Millisecond, false, c.hedgeQuantile)
	}
	if d := w.delay(&c); d != 0 {
		t.Fatalf("delay %v before warm-up, want 0", d)
	}
	for i := hedgeWarmup; i <= 100; i++ {
		w.record(time.Duration(i)*time.Millisecond, false, c.hedgeQuantile)
	}
	// Estimated at samples 20, 32, 48, 64, 80 and 96: the p95 of 1..n ms,
	// 31, 46, 61, 76 and 92 ms for the last five; the delay is their median.
	if d := w.delay(&c); d != 61*time.Millisecond {
		t.Errorf("delay %v, want 61ms", d)
	}
	// The ring forgets: samples of 2ms replace the old ones, and a few
	// estimates later the delay follows.
	for range 2 * hedgeWindow {
		w.record(2*time.Millisecond, false, c.hedgeQuantile)
	}
	if d := w.delay(&c); d != 5*time.Millisecond {
		t.Errorf("delay %v, want the 5ms minimum", d)
	}
	for range 2 * hedgeWindow {
		w.record(time.Minute, false, c.hedgeQuantile)
	}
	if d := w.delay(&c); d != time.Second {
		t.Errorf("delay %v, want the 1s maximum", d)
	}
}

// A latency cliff at the quantile: 5% of calls are 20x slower and were won
// by a hedge sent at the current delay. The delay must stay below the cliff
// instead of drifting up it; a clearly too high hedge rate must raise it.
func TestHedgeDelayWindowCliff(t *testing.T) {
	c := defaultConfig()
	c.hedgeMinDelay = time.Millisecond
	rng := rand.New(rand.NewPCG(3, 4))
	var w latencyWindow
	high := 0
	const calls = 40 * hedgeWindow
	for range calls {
		if d := w.delay(&c); d > 3*time.Millisecond {
			high++
		}
		fast := time.Duration(float64(2*time.Millisecond) * (0.75 + 0.5*rng.Float64()))
		if rng.Float64() < 0.05 {
			// The original was slow; a hedge sent at the delay won.
			w.record(max(w.delay(&c), 2500*time.Microsecond)+fast, true, c.hedgeQuantile)
			continue
		}
		w.record(fast, false, c.hedgeQuantile)
	}
	if high > calls/100 {
		t.Errorf("the delay was above the cliff for %d of %d calls", high, calls)
	}
	// 20% of calls hedged, far above 5%: the delay rises.
	before := w.delay(&c)
	for i := range hedgeWindow {
		if i%5 == 0 {
			w.record(before+2*time.Millisecond, true, c.hedgeQuantile)
		} else {
			w.record(2*time.Millisecond, false, c.hedgeQuantile)
		}
	}
	if after := w.delay(&c); after <= before {
		t.Errorf("delay %v after a 20%% hedge rate, want above %v", after, before)
	}
}

func TestHedgeAdaptiveDelayWarmsUpAndIsExported(t *testing.T) {
	srv := &testsvc.Server{}
	cc, m := hedgedClient(t, startServer(t, srv), WithAdaptiveHedgeDelay(0.9, time.Millisecond, time.Second))
	s, n := splitMethod(testsvc.Get)
	for i := range hedgeWarmup {
		if got := testutil.CollectAndCount(m.hedgeDelay); got != 0 {
			t.Fatalf("delay exported after %d calls, before warm-up", i)
		}
		if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "w"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "w"); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.hedgeDelay.WithLabelValues(s, n)); !(v >= 0.001 && v <= 1) {
		t.Errorf("exported delay %vs, want within [1ms, 1s]", v)
	}
}

// Many concurrent hedged calls, each with its own header, trailer and peer:
// -race checks that attempts never share what they write.
func TestHedgeConcurrentCallersRace(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		grpc.SetHeader(ctx, metadata.Pairs("req", req))
		grpc.SetTrailer(ctx, metadata.Pairs("req", req))
		if previousAttempts(ctx) == 0 && len(req)%3 == 0 {
			sleep(ctx, 20*time.Millisecond) // the scenario: a third of originals are slow
		}
		return req, nil
	}}
	cc, m := hedgedClient(t, startServer(t, srv), WithHedgeDelay(2*time.Millisecond))
	const callers, calls = 64, 8
	var wg sync.WaitGroup
	errs := make(chan error, callers*calls)
	for g := range callers {
		wg.Go(func() {
			for i := range calls {
				req := strings.Repeat("r", g%5+1) + strconv.Itoa(g*calls+i)
				var header, trailer metadata.MD
				var p peer.Peer
				got, err := testsvc.Call(ctxTimeout(t, 10*time.Second), cc, testsvc.Get, req,
					grpc.Header(&header), grpc.Trailer(&trailer), grpc.Peer(&p))
				switch {
				case err != nil:
					errs <- err
				case got != req || header.Get("req")[0] != req || trailer.Get("req")[0] != req || p.Addr == nil:
					errs <- fmt.Errorf("call %q got reply %q header %v trailer %v peer %v", req, got, header, trailer, p.Addr)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	h, w, _ := hedgeCount(m, testsvc.Get)
	t.Logf("%d calls, %d hedges, %d won by a hedge", callers*calls, h, w)
	if h == 0 {
		t.Error("no call was hedged")
	}
}

// TestHedgeReturnsOnlyWhenNoAttemptTouchesRequest: a caller reuses its
// request and reply as soon as the call returns. The invoker is built to
// read the request late, after it was cancelled (as grpc's marshalling of a
// losing attempt may): -race reports the access if the interceptor returns
// while a losing attempt can still run. Both orders: the original loses, and
// a hedge loses.
func TestHedgeReturnsOnlyWhenNoAttemptTouchesRequest(t *testing.T) {
	for _, originalWins := range []bool{false, true} {
		t.Run(fmt.Sprint("original wins ", originalWins), func(t *testing.T) {
			hedge := UnaryClientHedge(WithHedgeDelay(time.Millisecond), WithMaxAttempts(2))
			invoker := func(ctx context.Context, _ string, req, reply any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
				loser := (previousAttemptsOut(ctx) == 0) != originalWins
				if loser {
					<-ctx.Done()
					time.Sleep(5 * time.Millisecond) // still encoding the request
					_ = req.(*wrapperspb.StringValue).GetValue()
					return status.FromContextError(ctx.Err()).Err()
				}
				if originalWins {
					time.Sleep(20 * time.Millisecond) // past the delay: the hedge is in flight
				}
				reply.(*wrapperspb.StringValue).Value = req.(*wrapperspb.StringValue).GetValue()
				return nil
			}
			req, reply := wrapperspb.String("first"), new(wrapperspb.StringValue)
			for i := range 3 {
				if err := hedge(ctxTimeout(t, 5*time.Second), testsvc.Get, req, reply, nil, invoker); err != nil {
					t.Fatal(err)
				}
				if want := fmt.Sprint("req", i); reply.Value != req.Value || (i > 0 && req.Value != want) {
					t.Fatalf("reply %q for request %q", reply.Value, req.Value)
				}
				req.Value = fmt.Sprint("req", i+1) // reused at once
			}
		})
	}
}

// previousAttemptsOut reads grpc-previous-rpc-attempts from an attempt's
// outgoing context: 0 for the original.
func previousAttemptsOut(ctx context.Context) int {
	md, _ := metadata.FromOutgoingContext(ctx)
	if v := md.Get("grpc-previous-rpc-attempts"); len(v) > 0 {
		n, _ := strconv.Atoi(v[len(v)-1])
		return n
	}
	return 0
}

// goid returns the current goroutine's id, from its stack header.
func goid() string {
	var buf [64]byte
	s := string(buf[:runtime.Stack(buf[:], false)])
	return strings.Fields(s)[1]
}

// TestHedgeHappyPathOnCallersGoroutine: a hedged call answered before the
// delay runs its one attempt on the caller's goroutine, and the timer that
// would have started a hedge never does, even after the delay has passed.
func TestHedgeHappyPathOnCallersGoroutine(t *testing.T) {
	var mu sync.Mutex
	var attempts []string
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		mu.Lock()
		attempts = append(attempts, goid())
		mu.Unlock()
		return nil
	}
	const delay = 20 * time.Millisecond
	hedge := UnaryClientHedge(WithHedgeDelay(delay))
	caller := goid()
	for range 10 {
		if err := hedge(ctxTimeout(t, 5*time.Second), testsvc.Get, wrapperspb.String("x"), new(wrapperspb.StringValue), nil, invoker); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * delay) // the scenario: long after every timer would have fired
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 10 {
		t.Fatalf("%d attempts for 10 calls: a timer outlived its call", len(attempts))
	}
	for _, g := range attempts {
		if g != caller {
			t.Fatalf("an attempt ran on goroutine %s, not the caller's %s", g, caller)
		}
	}
}

package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// fastBackoff keeps tests quick; the backoff itself is tested in
// backoff_test.go.
var fastBackoff = WithBackoff(time.Millisecond, 5*time.Millisecond, 2)

// retryClient dials target through a Dialer, with the retry interceptors
// outside the Dialer's, grpc-go's own retry off, and m counting.
func retryClient(t testing.TB, target string, m *Metrics, dialerOpts []Option, retryOpts ...Option) *grpc.ClientConn {
	t.Helper()
	d := NewDialer(append(dialerOpts, WithMetrics(m))...)
	t.Cleanup(func() { d.Close() })
	retryOpts = append([]Option{fastBackoff, WithMetrics(m)}, retryOpts...)
	return newClient(t, target,
		grpc.WithContextDialer(d.DialContext),
		grpc.WithDisableRetry(),
		grpc.WithChainUnaryInterceptor(UnaryClientRetry(retryOpts...), d.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(StreamClientRetry(retryOpts...), d.StreamClientInterceptor()))
}

// failFirst returns a unary hook that fails the first n calls with code.
func failFirst(n int32, code codes.Code) func(context.Context, string, string) (string, error) {
	var calls atomic.Int32
	return func(_ context.Context, _, req string) (string, error) {
		if calls.Add(1) <= n {
			return "", status.Errorf(code, "planned failure %d", calls.Load())
		}
		return req, nil
	}
}

func retriedCount(m *Metrics, method string, code codes.Code) int {
	service, name := splitMethod(method)
	return int(testutil.ToFloat64(m.retries.WithLabelValues(service, name, code.String())))
}

func unprocessedCount(m *Metrics, method string) int {
	service, name := splitMethod(method)
	return int(testutil.ToFloat64(m.retryUnprocessed.WithLabelValues(service, name)))
}

func TestRetryUnavailableTwiceThenSuccess(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(2, codes.Unavailable)}
	m := NewMetrics()
	cc := retryClient(t, startServer(t, srv), m, nil)
	got, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a")
	if err != nil || got != "a" {
		t.Fatalf("Get = %q, %v; want a, nil", got, err)
	}
	if n := srv.Runs(testsvc.Get, "a"); n != 3 {
		t.Errorf("server ran Get %d times, want 3", n)
	}
	if got := srv.PreviousAttempts(); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("grpc-previous-rpc-attempts = %v, want [0 1 2]", got)
	}
	if n := retriedCount(m, testsvc.Get, codes.Unavailable); n != 2 {
		t.Errorf("retries_total{Unavailable} = %d, want 2", n)
	}
}

func TestRetryGivesUpAfterMaxAttempts(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(100, codes.Unavailable)}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil)
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "planned failure 3") {
		t.Fatalf("err = %v, want the server's third Unavailable", err)
	}
	if n := srv.Calls(); n != 3 {
		t.Errorf("server saw %d attempts, want exactly 3", n)
	}
	if got := srv.PreviousAttempts(); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("grpc-previous-rpc-attempts = %v, want [0 1 2]", got)
	}
}

func TestRetryNonIdempotentThatRanIsNotResent(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(100, codes.Unavailable)}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil)
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "once")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable", err)
	}
	if n := srv.Runs(testsvc.Echo, "once"); n != 1 {
		t.Errorf("Echo ran %d times, want exactly 1", n)
	}
}

func TestRetryIdempotentMethodsOption(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(1, codes.Unavailable)}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil, WithIdempotentMethods(testsvc.Echo))
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x"); err != nil {
		t.Fatal(err)
	}
	if n := srv.Runs(testsvc.Echo, "x"); n != 2 {
		t.Errorf("Echo declared idempotent ran %d times, want 2", n)
	}
}

// holdConn delays grpc's view of a peer close: an error its reader meets is
// held back until a write is refused (or the conn is closed). It recreates,
// deterministically, the real window in which grpc has not yet noticed a FIN
// and writes a new RPC onto the dead conn. The refusal itself is the Dialer
// conn's own pre-write probe on a real socket.
type holdConn struct {
	net.Conn
	hold    atomic.Bool
	sawEOF  chan struct{}
	eofOnce sync.Once
	release chan struct{}
	relOnce sync.Once
	refused atomic.Pointer[StaleConnError]
}

func (c *holdConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && c.hold.Load() {
		c.eofOnce.Do(func() { close(c.sawEOF) })
		<-c.release
	}
	return n, err
}

func (c *holdConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if se := (*StaleConnError)(nil); errors.As(err, &se) {
		c.refused.CompareAndSwap(nil, se)
		c.relOnce.Do(func() { close(c.release) })
	}
	return n, err
}

func (c *holdConn) Close() error {
	c.relOnce.Do(func() { close(c.release) })
	return c.Conn.Close()
}

func TestRetryStaleAtWriteNonIdempotentIsResent(t *testing.T) {
	srv := &testsvc.Server{}
	p := startProxy(t, startServer(t, srv), faultproxy.Config{})
	m := NewMetrics()
	// Probe before every pick and every write: the pre-write probe must be
	// the one that refuses.
	d := NewDialer(WithMetrics(m), WithProbeAfterIdle(0))
	t.Cleanup(func() { d.Close() })

	var first atomic.Pointer[holdConn]
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, addr)
		if err != nil {
			return nil, err
		}
		hc := &holdConn{Conn: c, sawEOF: make(chan struct{}), release: make(chan struct{})}
		first.CompareAndSwap(nil, hc)
		return hc, nil
	}
	// closeOnFirst runs inside the Dialer's interceptor, after its probe
	// before the pick found the conn alive: it closes the proxied conn (FIN)
	// and waits until the FIN has reached the client's socket.
	var closing atomic.Bool
	closeOnFirst := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if closing.CompareAndSwap(true, false) {
			hc := first.Load()
			hc.hold.Store(true)
			if p.CloseAll(false) != 1 {
				t.Error("proxy closed no conn")
			}
			select {
			case <-hc.sawEOF:
			case <-time.After(5 * time.Second):
				t.Error("FIN never reached the client")
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	var attemptErrs []error
	var mu sync.Mutex
	observe := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		mu.Lock()
		attemptErrs = append(attemptErrs, err)
		mu.Unlock()
		return err
	}
	cc := newClient(t, p.Addr(),
		grpc.WithContextDialer(dial),
		grpc.WithDisableRetry(),
		grpc.WithChainUnaryInterceptor(UnaryClientRetry(WithMetrics(m), fastBackoff), observe, d.UnaryClientInterceptor(), closeOnFirst))

	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "warm-up"); err != nil {
		t.Fatal(err)
	}
	// Let the warm-up's last frames leave, so that nothing but the refused
	// write can touch the conn during the next attempt.
	c := (*d.live.Load())[0]
	waitFor(t, time.Second, "a quiet conn", func() bool { return nanotime()-c.lastWrite.Load() > int64(20*time.Millisecond) })
	mu.Lock()
	attemptErrs = nil
	mu.Unlock()

	closing.Store(true)
	got, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x")
	if err != nil || got != "x" {
		t.Fatalf("Echo = %q, %v; want x, nil after one retry", got, err)
	}
	se := first.Load().refused.Load()
	if se == nil || se.Op != "write" || se.Reason != PeerClosed {
		t.Fatalf("the first conn's write refusal = %+v, want a write refused for peer_closed", se)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(attemptErrs) != 2 || status.Code(attemptErrs[0]) != codes.Unavailable || attemptErrs[1] != nil {
		t.Fatalf("attempts = %v, want [Unavailable, nil]", attemptErrs)
	}
	if n := srv.Runs(testsvc.Echo, "x"); n != 1 {
		t.Errorf("Echo ran %d times, want 1", n)
	}
	if n := staleCount(m, PeerClosed); n != 1 {
		t.Errorf("stale{peer_closed} = %d, want 1", n)
	}
	if n := unprocessedCount(m, testsvc.Echo); n != 1 {
		t.Errorf("retries_unprocessed_total = %d, want 1", n)
	}
	t.Logf("first attempt: %v; refusal: %v", attemptErrs[0], se)
}

func TestRetryResetFirstBytesAfterIdle(t *testing.T) {
	srv := &testsvc.Server{}
	addr := startServer(t, srv)
	const idle = 150 * time.Millisecond
	gap := func(i int) time.Duration { // straddle the proxy's idle time
		if i%2 == 0 {
			return idle + 20*time.Millisecond
		}
		return 10 * time.Millisecond
	}
	// A failure of the connection is retried at once: the backoff is never
	// asked for one (the default backoff would add up to 50ms to the p99).
	var backoffs atomic.Int32
	noBackoff := WithBackoffFunc(func(context.Context, uint) time.Duration {
		backoffs.Add(1)
		return DefaultInitialBackoff
	})
	m := NewMetrics()
	run := func(mode faultproxy.Mode, method string, calls int) (lat []time.Duration, fails int, p *faultproxy.Proxy) {
		p = startProxy(t, addr, faultproxy.Config{Mode: mode, Idle: idle})
		cc := retryClient(t, p.Addr(), m, nil, noBackoff)
		for i := range calls {
			time.Sleep(gap(i)) // the gap is the scenario
			start := time.Now()
			_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, method, fmt.Sprint(mode, i))
			lat = append(lat, time.Since(start))
			if err != nil {
				fails++
			}
		}
		return lat, fails, p
	}
	type result struct {
		lat   []time.Duration
		fails int
		p     *faultproxy.Proxy
	}
	var get, echo, clean result
	var wg sync.WaitGroup
	wg.Go(func() { get.lat, get.fails, get.p = run(faultproxy.ResetFirstBytesAfterIdle, testsvc.Get, 24) })
	wg.Go(func() { echo.lat, echo.fails, echo.p = run(faultproxy.ResetFirstBytesAfterIdle, testsvc.Echo, 24) })
	wg.Go(func() { clean.lat, clean.fails, clean.p = run(faultproxy.Pass, testsvc.Get, 24) })
	wg.Wait()

	if get.fails != 0 {
		t.Errorf("idempotent Get failed %d of 24 times, want 0", get.fails)
	}
	if get.p.Stats().RSTs == 0 {
		t.Error("the proxy reset nothing: the scenario did not happen")
	}
	if n := retriedCount(m, testsvc.Get, codes.Unavailable); n == 0 || backoffs.Load() != 0 {
		t.Errorf("Get: %d retries with %d backoffs, want retries, all at once", n, backoffs.Load())
	}
	if n := srv.MaxRuns(testsvc.Echo); n > 1 {
		t.Errorf("non-idempotent Echo ran %d times for one request, want at most 1", n)
	}
	pct := func(l []time.Duration, q float64) time.Duration {
		s := slices.Clone(l)
		slices.Sort(s)
		return s[int(q*float64(len(s)-1))]
	}
	t.Logf("Get under reset-first-bytes: p50 %v p99 %v, %d resets; fault-free Get: p50 %v p99 %v",
		pct(get.lat, 0.5), pct(get.lat, 0.99), get.p.Stats().RSTs, pct(clean.lat, 0.5), pct(clean.lat, 0.99))
	t.Logf("Echo under reset-first-bytes: %d of 24 failed (not resent: the request left the client), %d resets",
		echo.fails, echo.p.Stats().RSTs)
}

// pushbackHook fails the first call with Unavailable and the given pushback
// trailer, then succeeds; it records when each call arrived.
func pushbackHook(value string, at *[]time.Time, mu *sync.Mutex) func(context.Context, string, string) (string, error) {
	return func(ctx context.Context, _, req string) (string, error) {
		mu.Lock()
		*at = append(*at, time.Now())
		n := len(*at)
		mu.Unlock()
		if n == 1 {
			grpc.SetTrailer(ctx, metadata.Pairs(pushbackKey, value))
			return "", status.Error(codes.Unavailable, "pushed back")
		}
		return req, nil
	}
}

func TestRetryPushbackNegativeStops(t *testing.T) {
	var at []time.Time
	var mu sync.Mutex
	srv := &testsvc.Server{Unary: pushbackHook("-1", &at, &mu)}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil)
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable", err)
	}
	if n := srv.Calls(); n != 1 {
		t.Errorf("server saw %d attempts, want 1", n)
	}
}

func TestRetryPushbackWaits(t *testing.T) {
	var at []time.Time
	var mu sync.Mutex
	srv := &testsvc.Server{Unary: pushbackHook("300", &at, &mu)}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil)
	var trailer metadata.MD
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a", grpc.Trailer(&trailer)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(at) != 2 {
		t.Fatalf("server saw %d attempts, want 2", len(at))
	}
	if gap := at[1].Sub(at[0]); gap < 300*time.Millisecond {
		t.Errorf("retry came %v after the pushback, want at least 300ms", gap)
	}
	if len(trailer[pushbackKey]) != 0 {
		t.Errorf("caller's trailer = %v, want the final attempt's (no pushback)", trailer)
	}
}

func TestRetryBudgetCapsAttempts(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(1<<30, codes.Unavailable)}
	m := NewMetrics()
	cc := retryClient(t, startServer(t, srv), m, nil, WithRetryBudget(0.1, 0, time.Second))
	const calls = 60
	for range calls {
		testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a")
	}
	extra := srv.Calls() - calls
	service, name := splitMethod(testsvc.Get)
	throttled := int(testutil.ToFloat64(m.retryThrottled.WithLabelValues(service, name)))
	t.Logf("%d calls: %d extra attempts, %d retries throttled", calls, extra, throttled)
	if extra > calls/10+2 {
		t.Errorf("%d extra attempts for %d calls, want about 10%%", extra, calls)
	}
	if throttled == 0 {
		t.Error("no retry was throttled")
	}
}

func TestRetryPerAttemptTimeout(t *testing.T) {
	var calls atomic.Int32
	srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
		if calls.Add(1) == 1 {
			<-ctx.Done() // the first attempt hangs
			return "", ctx.Err()
		}
		return req, nil
	}}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil, WithPerAttemptTimeout(100*time.Millisecond))
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a"); err != nil {
		t.Fatalf("err = %v, want success on the second attempt", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("server saw %d attempts, want 2", n)
	}

	// Not for a method that may not run twice.
	calls.Store(0)
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "b")
	if status.Code(err) != codes.DeadlineExceeded || calls.Load() != 1 {
		t.Errorf("Echo: err = %v after %d attempts, want DeadlineExceeded after 1", err, calls.Load())
	}
}

func TestRetryCallerDeadlineIsNotRetried(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
		<-ctx.Done()
		return "", ctx.Err()
	}}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil,
		WithRetryableCodes(codes.Unavailable, codes.DeadlineExceeded, codes.Canceled))
	_, err := testsvc.Call(ctxTimeout(t, 100*time.Millisecond), cc, testsvc.Get, "a")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if n := srv.Calls(); n != 1 {
		t.Errorf("server saw %d attempts, want 1", n)
	}
}

func TestRetryNoSleepPastDeadline(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(100, codes.Unavailable)}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil,
		WithBackoffFunc(func(context.Context, uint) time.Duration { return 2 * time.Second }))
	start := time.Now()
	_, err := testsvc.Call(ctxTimeout(t, 500*time.Millisecond), cc, testsvc.Get, "a")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "planned failure 1") {
		t.Fatalf("err = %v, want the attempt's own Unavailable, not the deadline", err)
	}
	if el := time.Since(start); el > 400*time.Millisecond {
		t.Errorf("returned after %v, want at once", el)
	}
}

func TestRetryPerCallOptions(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(100, codes.Unavailable)}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil)
	testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a", WithMaxAttempts(5))
	if n := srv.Runs(testsvc.Get, "a"); n != 5 {
		t.Errorf("per-call WithMaxAttempts(5): %d attempts, want 5", n)
	}
	testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "b", WithRetryDisabled())
	if n := srv.Runs(testsvc.Get, "b"); n != 1 {
		t.Errorf("per-call WithRetryDisabled: %d attempts, want 1", n)
	}
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "c", WithMaxAttempts(0))
	if status.Code(err) != codes.InvalidArgument || srv.Runs(testsvc.Get, "c") != 0 {
		t.Errorf("per-call WithMaxAttempts(0): %v, want InvalidArgument and no attempt", err)
	}
}

func TestRetryInvalidOptions(t *testing.T) {
	srv := &testsvc.Server{}
	addr := startServer(t, srv)
	cc := newClient(t, addr,
		grpc.WithChainUnaryInterceptor(UnaryClientRetry(WithMaxAttempts(0))),
		grpc.WithChainStreamInterceptor(StreamClientRetry(WithBackoff(0, 0, 0))))
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "WithMaxAttempts(0)") {
		t.Errorf("unary: %v, want InvalidArgument naming WithMaxAttempts(0)", err)
	}
	_, err = cc.NewStream(ctxTimeout(t, 5*time.Second), testsvc.WatchDesc, testsvc.Watch)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "WithBackoff") {
		t.Errorf("stream: %v, want InvalidArgument naming WithBackoff", err)
	}
	if srv.Calls() != 0 {
		t.Errorf("server saw %d calls, want 0", srv.Calls())
	}
}

func TestRetryPassesThroughWhenHedgingOwnsAttempts(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(100, codes.Unavailable)}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil)
	testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a", &attempt{})
	if n := srv.Calls(); n != 1 {
		t.Errorf("server saw %d attempts, want 1: the owner of the attempts retries", n)
	}
}

// BenchmarkRetryHappyPath compares the retry interceptor's success path with
// a pass-through interceptor, both over an invoker that returns nil at once.
func BenchmarkRetryHappyPath(b *testing.B) {
	invoker := func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
		return finishAsGRPC(opts, nil)
	}
	passThrough := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	// The Dialer's interceptor inside the retry one, as installed; its
	// invoker is built once, so the chaining itself costs nothing here.
	retry, dialer := UnaryClientRetry(), NewDialer().UnaryClientInterceptor()
	dialerInvoker := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		return dialer(ctx, method, req, reply, cc, invoker, opts...)
	}
	retryOverDialer := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, _ grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return retry(ctx, method, req, reply, cc, dialerInvoker, opts...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	for _, bc := range []struct {
		name string
		ic   grpc.UnaryClientInterceptor
	}{
		{"pass-through", passThrough},
		{"retry", UnaryClientRetry()},
		{"retry+dialer", retryOverDialer},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.ic(ctx, testsvc.Get, nil, nil, nil, invoker); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestRetryThrottlingTokenBucket(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(1<<30, codes.Unavailable)}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil, WithRetryThrottling(10, 0.1))
	for range 10 {
		testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a")
	}
	// Each failure drains a token from 10; retries stop once 5 or fewer are
	// left: 3 attempts (10 -> 7), 2 (-> 5), then 1 per call.
	if n := srv.Calls(); n != 13 {
		t.Errorf("server saw %d attempts for 10 calls, want 13", n)
	}
}

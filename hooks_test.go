package grpcguard

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// recorder is a Hooks that keeps every event, for tests.
type recorder struct {
	mu         sync.Mutex
	attempts   []AttemptEvent
	retries    []RetryEvent
	hedges     []HedgeEvent
	notResent  []NotResentEvent
	ends       []CallEndEvent
	stale      []StaleConnEvent
	dialErrors []DialErrorEvent
	retired    []ConnRetiredEvent
}

func (r *recorder) hooks() Hooks {
	return Hooks{
		OnAttempt: func(_ context.Context, e AttemptEvent) {
			r.mu.Lock()
			r.attempts = append(r.attempts, e)
			r.mu.Unlock()
		},
		OnRetry: func(_ context.Context, e RetryEvent) { r.mu.Lock(); r.retries = append(r.retries, e); r.mu.Unlock() },
		OnHedge: func(_ context.Context, e HedgeEvent) { r.mu.Lock(); r.hedges = append(r.hedges, e); r.mu.Unlock() },
		OnNotResent: func(_ context.Context, e NotResentEvent) {
			r.mu.Lock()
			r.notResent = append(r.notResent, e)
			r.mu.Unlock()
		},
		OnCallEnd:   func(_ context.Context, e CallEndEvent) { r.mu.Lock(); r.ends = append(r.ends, e); r.mu.Unlock() },
		OnStaleConn: func(e StaleConnEvent) { r.mu.Lock(); r.stale = append(r.stale, e); r.mu.Unlock() },
		OnDialError: func(e DialErrorEvent) { r.mu.Lock(); r.dialErrors = append(r.dialErrors, e); r.mu.Unlock() },
		OnConnRetired: func(e ConnRetiredEvent) {
			r.mu.Lock()
			r.retired = append(r.retired, e)
			r.mu.Unlock()
		},
	}
}

// TestNotResentMayHaveRun: a call that may have run and is not idempotent is
// not sent again, and says why: in its status (NotResentReason) and to the
// hook, once, with the server it reached.
func TestNotResentMayHaveRun(t *testing.T) {
	srv := &testsvc.Server{Unary: func(context.Context, string, string) (string, error) {
		return "", status.Error(codes.Unavailable, "ran, then failed")
	}}
	var rec recorder
	dopts, err := DialOptions(WithHooks(rec.hooks()))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, srv), dopts...)
	_, err = testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "pay")
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "ran, then failed" {
		t.Fatalf("call: %v, want the server's Unavailable", err)
	}
	if why, ok := NotResentReason(err); !ok || why != ReasonMayHaveRun {
		t.Errorf("NotResentReason = %q %v, want %s", why, ok, ReasonMayHaveRun)
	}
	if n := srv.Runs(testsvc.Echo, "pay"); n != 1 {
		t.Errorf("ran %d times, want 1", n)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.notResent) != 1 || rec.notResent[0].Reason != ReasonMayHaveRun || rec.notResent[0].Peer == nil ||
		rec.notResent[0].Method != testsvc.Echo || rec.notResent[0].MethodLabel != testsvc.Echo || rec.notResent[0].Attempt != 1 {
		t.Errorf("OnNotResent: %+v, want one MAY_HAVE_RUN with the peer", rec.notResent)
	}
	if len(rec.retries) != 0 || len(rec.ends) != 1 || rec.ends[0].Attempts != 1 || rec.ends[0].Err == nil {
		t.Errorf("retries %+v, call ends %+v: want none, and one failed call of one attempt", rec.retries, rec.ends)
	}
}

// TestHooksRetriedCall: a call retried twice is seen attempt by attempt,
// each retry with its reason, and summed up once; its success carries no
// reason. One that runs out of attempts says so.
func TestHooksRetriedCall(t *testing.T) {
	srv := &testsvc.Server{Unary: failFirst(2, codes.Unavailable)}
	var rec recorder
	dopts, err := DialOptions(WithHooks(rec.hooks()), fastBackoff)
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, srv), dopts...)
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "a"); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	if len(rec.attempts) != 3 || rec.attempts[2].Attempt != 3 || len(rec.retries) != 2 || rec.retries[0].Reason != ReasonIdempotent ||
		len(rec.ends) != 1 || rec.ends[0].Attempts != 3 || rec.ends[0].Retries != 2 || rec.ends[0].Err != nil || len(rec.notResent) != 0 {
		t.Errorf("attempts %+v retries %+v ends %+v not resent %+v", rec.attempts, rec.retries, rec.ends, rec.notResent)
	}
	rec.mu.Unlock()

	srv.Unary = failFirst(100, codes.Unavailable)
	_, err = testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "b")
	if why, _ := NotResentReason(err); why != ReasonAttemptsExhausted {
		t.Errorf("after every attempt failed: %v, reason %q, want %s", err, why, ReasonAttemptsExhausted)
	}
}

// TestHooksHedge: a hedge started by the delay is reported, and counted in
// the call's summary.
func TestHooksHedge(t *testing.T) {
	var first sync.Once
	srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
		slow := false
		first.Do(func() { slow = true })
		if slow {
			<-ctx.Done() // the original straggles until the hedge wins
			return "", ctx.Err()
		}
		return req, nil
	}}
	var rec recorder
	dopts, err := DialOptions(WithHooks(rec.hooks()), WithHedgeDelay(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, srv), dopts...)
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "h"); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.hedges) != 1 || rec.hedges[0].Attempt != 2 || rec.hedges[0].Delay != 20*time.Millisecond {
		t.Errorf("OnHedge: %+v, want one, attempt 2", rec.hedges)
	}
	if len(rec.ends) != 1 || rec.ends[0].Hedges != 1 || rec.ends[0].Attempts != 2 || rec.ends[0].Retries != 0 {
		t.Errorf("OnCallEnd: %+v, want 2 attempts, 1 hedge", rec.ends)
	}
	if len(rec.attempts) != 2 || !rec.attempts[1].Hedge {
		t.Errorf("OnAttempt: %+v, want the original and a hedge", rec.attempts)
	}
}

// TestHooksStaleConn: a conn the peer closed while idle is reported with
// its reason, and a dial that fails is reported.
func TestHooksStaleConn(t *testing.T) {
	var rec recorder
	p := startProxy(t, startServer(t, &testsvc.Server{}), faultproxy.Config{Mode: faultproxy.FINAfterIdle, Idle: 30 * time.Millisecond})
	cc, _ := guardedClient(t, p.Addr(), WithHooks(rec.hooks()), WithProbeAfterIdle(5*time.Millisecond))
	mustCall(t, cc, "a")
	waitFor(t, 5*time.Second, "the proxy's close found", func() bool {
		time.Sleep(60 * time.Millisecond) // past the proxy's idle time
		mustCall(t, cc, "b")
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.stale) > 0
	})
	rec.mu.Lock()
	if e := rec.stale[0]; e.Reason != PeerClosed || e.Remote == nil {
		t.Errorf("OnStaleConn: %+v, want peer closed with its remote", e)
	}
	rec.mu.Unlock()

	d := NewDialer(WithHooks(rec.hooks()))
	defer d.Close()
	if _, err := d.DialContext(ctxTimeout(t, time.Second), "127.0.0.1:1"); err == nil {
		t.Fatal("dialed port 1")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.dialErrors) != 1 || rec.dialErrors[0].Addr != "127.0.0.1:1" || rec.dialErrors[0].Err == nil {
		t.Errorf("OnDialError: %+v", rec.dialErrors)
	}
}

// TestHooksMethodLabelBounded: a method grpcguard does not know is labelled
// "other" in events, whatever its name.
func TestHooksMethodLabelBounded(t *testing.T) {
	var rec recorder
	dopts, err := DialOptions(WithHooks(rec.hooks()))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, &testsvc.Server{}), dopts...)
	cc.Invoke(ctxTimeout(t, 5*time.Second), "/unknown.Service/Nope", wrapperspb.String("x"), new(wrapperspb.StringValue))
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.ends) != 1 || rec.ends[0].MethodLabel != otherLabel || rec.ends[0].Method != "/unknown.Service/Nope" {
		t.Errorf("OnCallEnd: %+v, want the method labelled %q", rec.ends, otherLabel)
	}
}

// TestWithHooksAddsUp: two WithHooks both see each event, in order.
func TestWithHooksAddsUp(t *testing.T) {
	var order []int
	cfg, err := newConfig([]Option{
		WithHooks(Hooks{OnDialError: func(DialErrorEvent) { order = append(order, 1) }}),
		WithHooks(Hooks{}),
		WithHooks(Hooks{OnDialError: func(DialErrorEvent) { order = append(order, 2) }}),
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.hooks.OnDialError(DialErrorEvent{})
	if len(order) != 2 || order[0] != 1 || order[1] != 2 {
		t.Errorf("calls %v, want [1 2]", order)
	}
	if cfg.hooks.OnRetry != nil {
		t.Error("a hook nobody set is not nil: it would cost a call on every event")
	}
}

// TestHooksConnRetired: a conn idle past WithMaxIdle is retired and
// reported.
func TestHooksConnRetired(t *testing.T) {
	var rec recorder
	dopts, err := DialOptions(WithHooks(rec.hooks()), WithMaxIdle(50*time.Millisecond), WithSweepInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, &testsvc.Server{}), dopts...)
	mustCall(t, cc, "a")
	waitFor(t, 5*time.Second, "the idle conn retired", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.retired) > 0
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if e := rec.retired[0]; e.Learned || e.Remote == nil {
		t.Errorf("OnConnRetired: %+v, want retired at WithMaxIdle, with its remote", e)
	}
}

package grpcguard

import (
	"context"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func ms(v ...int) []time.Duration {
	d := make([]time.Duration, len(v))
	for i, x := range v {
		d[i] = time.Duration(x) * time.Millisecond
	}
	return d
}

func TestEstimateHorizon(t *testing.T) {
	for _, tc := range []struct {
		name string
		ages []time.Duration
		want time.Duration
	}{
		{"one death retires nothing", ms(1000), 0},
		{"two that agree", ms(1300, 1000), time.Second},
		{"the youngest corroborated", ms(1300, 1000, 1100), time.Second},
		{"one odd early death is ignored", ms(60, 1000, 1200), time.Second},
		{"two far apart agree on nothing", ms(60, 1000), 0},
		{"two early deaths agree", ms(60, 70, 1000), 60 * time.Millisecond},
		{"late detection within twice", ms(1000, 1900), time.Second},
	} {
		if got := estimateHorizon(tc.ages); got != tc.want {
			t.Errorf("%s: estimateHorizon(%v) = %v, want %v", tc.name, tc.ages, got, tc.want)
		}
	}
}

// death is an idle death of kind seen at, with path idle equal to idle.
func death(kind deathKind, idle time.Duration, at int64) idleDeath {
	return idleDeath{idle: idle, path: idle, kind: kind, at: at}
}

// Retirement needs two deaths that agree; one crash teaches nothing; deaths at
// once are one event; busy deaths and announced closes are only counted.
func TestHorizonNeedsConsistentEvidence(t *testing.T) {
	m := NewMetrics()
	h := newIdleHorizon(learnHorizon, DefaultKeepAliveIdle, m)
	now := nanotime()
	h.observe(death(deathClosed, 10*time.Millisecond, now)) // a busy conn killed
	h.observe(death(deathClosed, time.Second, now+int64(time.Second)))
	if got := h.retireAge(); got != 0 {
		t.Fatalf("retire age %v after one idle death, want none", got)
	}
	h.observe(death(deathClosed, 1200*time.Millisecond, now+int64(time.Second)+int64(5*time.Millisecond)))
	if got := h.retireAge(); got != 0 {
		t.Fatalf("retire age %v after two deaths 5ms apart (one event), want none", got)
	}
	h.observe(death(deathAnnounced, 1100*time.Millisecond, now+int64(2*time.Second)))
	if got := h.retireAge(); got != 0 {
		t.Fatalf("retire age %v after a GOAWAY-announced close, want none", got)
	}
	h.observe(death(deathClosed, 1300*time.Millisecond, now+int64(3*time.Second)))
	if got := h.retireAge(); got != 800*time.Millisecond {
		t.Errorf("retire age %v after two deaths at 1s and 1.3s, want 80%% of 1s", got)
	}
	if got := testutil.ToFloat64(m.horizon); got != 1 {
		t.Errorf("idle_horizon_seconds = %v, want 1", got)
	}
	if got := testutil.CollectAndCount(m.staleIdleAge); got != 1 {
		t.Errorf("stale_connection_idle_seconds has %d series, want 1", got)
	}
	if h.keepAliveIdle() != DefaultKeepAliveIdle {
		t.Errorf("keepalive %v after FIN deaths only, want the default: keepalive cannot satisfy a closer", h.keepAliveIdle())
	}

	fixed := newIdleHorizon(300*time.Millisecond, DefaultKeepAliveIdle, nil)
	fixed.observe(death(deathClosed, 100*time.Millisecond, now))
	fixed.observe(death(deathClosed, 110*time.Millisecond, now+int64(time.Second)))
	if got := fixed.retireAge(); got != 300*time.Millisecond {
		t.Errorf("WithMaxIdle(300ms): retire age %v after deaths at 100ms, want 300ms (not learned)", got)
	}
	off := newIdleHorizon(0, DefaultKeepAliveIdle, nil)
	off.observe(death(deathClosed, time.Second, now))
	off.observe(death(deathClosed, time.Second, now+int64(time.Second)))
	if got := off.retireAge(); got != 0 {
		t.Errorf("WithMaxIdle(0): retire age %v, want never", got)
	}
}

// A reset after idle shortens keepalive to half the path idle (whole seconds,
// at least 1s, at most the configured), arms the path check below it, and
// retires nothing; it lasts keepAliveMemory.
func TestHorizonResetShortensKeepAlive(t *testing.T) {
	m := NewMetrics()
	h := newIdleHorizon(learnHorizon, DefaultKeepAliveIdle, m)
	if got := testutil.ToFloat64(m.keepAlive); got != DefaultKeepAliveIdle.Seconds() {
		t.Fatalf("keepalive_seconds = %v, want %v", got, DefaultKeepAliveIdle.Seconds())
	}
	now := nanotime()
	h.sawAlive(8*time.Second, now)
	if !h.knownAlive(5 * time.Second) {
		t.Fatal("a path seen alive after 8s is not known alive at 5s")
	}
	if !h.observe(death(deathReset, 7650*time.Millisecond, now)) {
		t.Fatal("a reset after 7.65s of idle did not change the keepalive")
	}
	if got := h.keepAliveIdle(); got != 3*time.Second {
		t.Errorf("keepalive %v after a reset at 7.65s, want 3s", got)
	}
	if got := testutil.ToFloat64(m.keepAlive); got != 3 {
		t.Errorf("keepalive_seconds = %v, want 3", got)
	}
	if h.knownAlive(5 * time.Second) {
		t.Error("still known alive at 5s after a reset at 7.65s: the alive edge was not forgotten")
	}
	if h.retireAge() != 0 {
		t.Error("one reset retires conns")
	}
	h.sawAlive(9*time.Second, now+1)
	if h.knownAlive(8 * time.Second) {
		t.Error("known alive past the dead edge")
	}
	h.sawAlive(3*time.Second, now+2)
	if !h.knownAlive(2 * time.Second) {
		t.Error("a path seen alive after 3s is not known alive at 2s")
	}
	h.observe(death(deathReset, 1500*time.Millisecond, now+int64(time.Second)))
	if got := h.keepAliveIdle(); got != time.Second {
		t.Errorf("keepalive %v after a reset at 1.5s, want the 1s floor", got)
	}
	if h.refresh(now + int64(keepAliveMemory) - int64(time.Second)) {
		t.Error("keepalive restored before keepAliveMemory")
	}
	if !h.refresh(now+int64(keepAliveMemory)+int64(2*time.Second)) || h.keepAliveIdle() != DefaultKeepAliveIdle {
		t.Errorf("keepalive %v after keepAliveMemory, want the configured one back", h.keepAliveIdle())
	}
	off := newIdleHorizon(learnHorizon, 0, nil)
	if off.observe(death(deathReset, 8*time.Second, now)) || off.keepAliveIdle() != 0 {
		t.Error("WithKeepAlive(0): a reset turned keepalive on")
	}
}

// A death is forgotten after 16 times its age (at least a minute): a short
// horizon does not outlive its cause for long.
func TestHorizonForgets(t *testing.T) {
	h := newIdleHorizon(learnHorizon, DefaultKeepAliveIdle, nil)
	now := nanotime()
	h.observe(death(deathClosed, 100*time.Millisecond, now))
	h.observe(death(deathClosed, 100*time.Millisecond, now+int64(time.Second)))
	if got := h.retireAge(); got != 80*time.Millisecond {
		t.Fatalf("retire age %v, want 80ms", got)
	}
	h.refresh(now + int64(horizonMemoryMin) - 1)
	if h.retireAge() == 0 {
		t.Fatal("forgotten before a minute")
	}
	h.refresh(now + int64(horizonMemoryMin) + int64(2*time.Second))
	if got := h.retireAge(); got != 0 {
		t.Fatalf("retire age %v a minute later, want forgotten", got)
	}
	long := newIdleHorizon(learnHorizon, DefaultKeepAliveIdle, nil)
	long.observe(death(deathClosed, 350*time.Second, now)) // an NLB's idle timeout
	long.observe(death(deathClosed, 400*time.Second, now+int64(time.Second)))
	long.refresh(now + int64(time.Hour))
	if got := long.retireAge(); got != 280*time.Second {
		t.Errorf("350s deaths forgotten within an hour: retire age %v", got)
	}
}

// WithMaxIdle: a conn idle that long is retired before the next call picks
// it, counted as retired, not stale, and the call goes out on a new conn.
func TestRetireIdleConnBeforePick(t *testing.T) {
	m := NewMetrics()
	srv := &testsvc.Server{}
	p := startProxy(t, startServer(t, srv), faultproxy.Config{})
	cc := bundleClient(t, p.Addr(), WithMetrics(m), WithMaxIdle(50*time.Millisecond))
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "a"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(80 * time.Millisecond)
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "b"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(m.retiredBy[1]); n != 1 {
		t.Errorf("connections_retired_total{reason=max_idle} = %v, want 1", n)
	}
	if n := staleTotal(m); n != 0 {
		t.Errorf("stale_connections_total = %v, want 0: retiring is not finding dead", n)
	}
	if n := p.Stats().Accepted; n != 2 {
		t.Errorf("the proxy accepted %d conns, want 2: the second call on a new one", n)
	}
}

// usedPair is a Dialer conn, marked used as an attempt ending on it would,
// and the interceptors' facts present.
func usedPair(t *testing.T, d *Dialer) *conn {
	t.Helper()
	d.UnaryClientInterceptor()
	d.StreamClientInterceptor()
	c0, _ := loopbackPair(t, d.DialContext)
	c := c0.(*conn)
	c.used.Store(true)
	return c
}

// A conn with a write in flight is never retired, however long the write
// has been blocked.
func TestRetireSparesConnWithWriteInFlight(t *testing.T) {
	d := NewDialer(WithMaxIdle(time.Millisecond))
	defer d.Close()
	c := usedPair(t, d)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c.writing.Add(1) // as Write does before its syscall
	time.Sleep(5 * time.Millisecond)
	d.beforePick(context.Background(), 0)
	if s := c.state.Load(); s != stateOpen {
		t.Fatalf("state %d, want open: a conn in the middle of a write was retired", s)
	}
	c.writing.Add(-1)
	d.nextCheck.Store(0)
	d.beforePick(context.Background(), 0)
	if s := c.state.Load(); s != stateRetired && s != stateReleased {
		t.Fatalf("state %d, want retired once the write is done", s)
	}
}

// A conn no attempt has ended on may still be in grpc's handshake: it is not
// retired, however short the horizon, even after it wrote.
func TestRetireSparesConnNotYetUsed(t *testing.T) {
	d := NewDialer(WithMaxIdle(time.Millisecond))
	defer d.Close()
	d.UnaryClientInterceptor()
	d.StreamClientInterceptor()
	c0, _ := loopbackPair(t, d.DialContext)
	c := c0.(*conn)
	if _, err := c.Write([]byte("PRI * HTTP/2.0")); err != nil { // a preface
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	d.beforePick(context.Background(), 0)
	if s := c.state.Load(); s != stateOpen {
		t.Fatalf("state %d, want open: a conn mid-handshake was retired", s)
	}
}

// An RPC in flight holds back retirement, and so does the lack of the
// interceptors' facts.
func TestRetireSparesConnWhileRPCInFlight(t *testing.T) {
	d := NewDialer(WithMaxIdle(time.Millisecond))
	defer d.Close()
	c0, _ := loopbackPair(t, d.DialContext)
	c := c0.(*conn)
	c.used.Store(true)
	time.Sleep(5 * time.Millisecond)
	d.beforePick(context.Background(), 0)
	if s := c.state.Load(); s != stateOpen {
		t.Fatalf("state %d, want open: retired without the interceptors' facts", s)
	}
	d.UnaryClientInterceptor()
	d.StreamClientInterceptor()
	d.calls.Add(1)
	d.nextCheck.Store(0)
	d.beforePick(context.Background(), 0)
	if s := c.state.Load(); s != stateOpen {
		t.Fatalf("state %d, want open: retired with a call in flight", s)
	}
	d.nextCheck.Store(0)
	d.beforePick(context.Background(), 1) // the call is the one asking
	if s := c.state.Load(); s != stateRetired && s != stateReleased {
		t.Fatalf("state %d, want retired when only the asking attempt is in flight", s)
	}
	d.calls.Add(-1)
}

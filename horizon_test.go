package grpcguard

import (
	"context"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestEstimateHorizon(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i, x := range v {
			d[i] = time.Duration(x) * time.Millisecond
		}
		return d
	}
	for _, tc := range []struct {
		name string
		ages []time.Duration
		want time.Duration
	}{
		{"one death", ms(1000), time.Second},
		{"the youngest", ms(1300, 1000, 1100), time.Second},
		{"one odd early death is ignored", ms(60, 1000, 1200), time.Second},
		{"an odd death seen first is overruled by the second", ms(60, 1000), time.Second},
		{"two early deaths are not odd", ms(60, 70, 1000), 60 * time.Millisecond},
		{"late detection does not hide the youngest", ms(1000, 3500), time.Second},
		{"a death at a fifth is odd", ms(200, 1000), time.Second},
	} {
		if got := estimateHorizon(tc.ages); got != tc.want {
			t.Errorf("%s: estimateHorizon(%v) = %v, want %v", tc.name, tc.ages, got, tc.want)
		}
	}
}

func TestHorizonLearnsFromIdleDeathsOnly(t *testing.T) {
	m := NewMetrics()
	h := newIdleHorizon(learnHorizon, m)
	h.observe(10 * time.Millisecond) // a busy conn killed: not an idle death
	if got := h.retireAgeNow(); got != 0 {
		t.Fatalf("retire age %v after a busy death, want none", got)
	}
	h.observe(time.Second)
	if got := h.retireAgeNow(); got != 800*time.Millisecond {
		t.Errorf("retire age %v, want 80%% of 1s", got)
	}
	if got := testutil.ToFloat64(m.horizon); got != 1 {
		t.Errorf("idle_horizon_seconds = %v, want 1", got)
	}
	if got := testutil.CollectAndCount(m.staleIdleAge); got != 1 {
		t.Errorf("stale_connection_idle_seconds has %d series, want 1", got)
	}
	fixed := newIdleHorizon(300*time.Millisecond, nil)
	fixed.observe(100 * time.Millisecond)
	if got := fixed.retireAgeNow(); got != 300*time.Millisecond {
		t.Errorf("WithMaxIdle(300ms): retire age %v after a death at 100ms, want 300ms (not learned)", got)
	}
	off := newIdleHorizon(0, nil)
	off.observe(time.Second)
	if got := off.retireAgeNow(); got != 0 {
		t.Errorf("WithMaxIdle(0): retire age %v, want never", got)
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
	if n := testutil.ToFloat64(m.retiredConns); n != 1 {
		t.Errorf("connections_retired_total = %v, want 1", n)
	}
	if n := staleTotal(m); n != 0 {
		t.Errorf("stale_connections_total = %v, want 0: retiring is not finding dead", n)
	}
	if n := p.Stats().Accepted; n != 2 {
		t.Errorf("the proxy accepted %d conns, want 2: the second call on a new one", n)
	}
}

// A conn with a write in flight is never retired, however long the write
// has been blocked.
func TestRetireSparesConnWithWriteInFlight(t *testing.T) {
	d := NewDialer(WithMaxIdle(time.Millisecond))
	defer d.Close()
	c0, _ := loopbackPair(t, d.DialContext)
	c := c0.(*conn)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c.writing.Add(1) // as Write does before its syscall
	time.Sleep(5 * time.Millisecond)
	d.beforePick(context.Background())
	if s := c.state.Load(); s != stateOpen {
		t.Fatalf("state %d, want open: a conn in the middle of a write was retired", s)
	}
	c.writing.Add(-1)
	d.beforePick(context.Background())
	if s := c.state.Load(); s != stateRetired && s != stateReleased {
		t.Fatalf("state %d, want retired once the write is done", s)
	}
}

// A death is forgotten after 16 times its age (at least a minute): a short
// horizon that a crash taught does not outlive its cause for long.
func TestHorizonForgets(t *testing.T) {
	h := newIdleHorizon(learnHorizon, nil)
	before := nanotime()
	h.observe(100 * time.Millisecond)
	now := nanotime()
	if got := h.retireAgeAt(now); got != 80*time.Millisecond {
		t.Fatalf("retire age %v, want 80ms", got)
	}
	if got := h.retireAgeAt(before + int64(horizonMemoryMin) - 1); got == 0 {
		t.Fatal("forgotten before a minute")
	}
	if got := h.retireAgeAt(now + int64(horizonMemoryMin) + int64(time.Second)); got != 0 {
		t.Fatalf("retire age %v a minute later, want forgotten", got)
	}
	long := newIdleHorizon(learnHorizon, nil)
	long.observe(350 * time.Second) // an NLB's idle timeout
	if got := long.retireAgeAt(nanotime() + int64(time.Hour)); got != 280*time.Second {
		t.Errorf("a 350s death forgotten within an hour: retire age %v", got)
	}
}

// A conn grpc has not written on yet is still being set up: it is not
// retired, however short the horizon.
func TestRetireSparesConnNotYetUsed(t *testing.T) {
	d := NewDialer(WithMaxIdle(time.Millisecond))
	defer d.Close()
	c0, _ := loopbackPair(t, d.DialContext)
	c := c0.(*conn)
	time.Sleep(5 * time.Millisecond)
	d.beforePick(context.Background())
	if s := c.state.Load(); s != stateOpen {
		t.Fatalf("state %d, want open: a conn not yet written was retired", s)
	}
}

func (h *idleHorizon) retireAgeAt(now int64) time.Duration { a, _ := h.retireAge(now); return a }

func (h *idleHorizon) retireAgeNow() time.Duration { return h.retireAgeAt(nanotime()) }

func retireOf(h *idleHorizon) time.Duration { return h.retireAgeNow() }

// A conn whose last I/O was a write may have a call waiting for its answer:
// it keeps the full horizon, not the margin.
func TestRetireSparesAwaitingConnTheMargin(t *testing.T) {
	d := NewDialer()
	defer d.Close()
	d.horizon.observe(100 * time.Millisecond) // retire at 80ms, or 100ms when awaiting
	c0, _ := loopbackPair(t, d.DialContext)
	c := c0.(*conn)
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(90 * time.Millisecond)
	d.beforePick(context.Background())
	if st := c.state.Load(); st != stateOpen {
		t.Fatalf("state %d at 90ms: a conn awaiting its answer was retired within the margin", st)
	}
	waitFor(t, 5*time.Second, "retirement past the full horizon", func() bool {
		d.beforePick(context.Background())
		return c.state.Load() != stateOpen
	})
}

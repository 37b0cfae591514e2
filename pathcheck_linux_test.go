package grpcguard

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// The first call after a second of idle waits for the path check, which a
// live peer answers; calls on a busy conn never wait for one. (A path that
// forgot the flow, answering with RST, needs a real stateful middlebox: see
// the middlebox tests.)
func TestPathCheckBeforeFirstWriteAfterIdle(t *testing.T) {
	if testing.Short() {
		t.Skip("path check: skipped in -short mode (needs a second of idle)")
	}
	m := NewMetrics()
	cc := bundleClient(t, startServer(t, &testsvc.Server{}), WithMetrics(m))
	for i := range 12 { // busy: a call every 100ms for over a second
		if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "busy"); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	checks := func() float64 {
		n := 0.0
		for _, c := range m.verifyBy {
			n += testutil.ToFloat64(c)
		}
		return n
	}
	if n := checks(); n != 0 {
		t.Fatalf("%v path checks on a busy conn, want none", n)
	}
	time.Sleep(DefaultVerifyAfterIdle + 100*time.Millisecond)
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "after idle"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(m.verifyBy[verifyAlive]); n != 1 {
		t.Errorf("verifications{alive} = %v after one idle period, want 1", n)
	}
	if n := testutil.ToFloat64(m.verifyBy[verifyStale]) + testutil.ToFloat64(m.verifyBy[verifyUnanswered]); n != 0 {
		t.Errorf("%v path checks stale or unanswered on a live loopback conn, want none", n)
	}
}

// Writers that find the same idle conn share one check: the ones that waited
// for it take its answer.
func TestPathCheckShared(t *testing.T) {
	if testing.Short() {
		t.Skip("path check: skipped in -short mode (needs a second of idle)")
	}
	d := NewDialer()
	defer d.Close()
	c0, _ := loopbackPair(t, d.DialContext)
	c := c0.(*conn)
	if !c.path.ok() {
		t.Fatal("no path check on a Linux TCP conn")
	}
	time.Sleep(1100 * time.Millisecond)
	var wg sync.WaitGroup
	results := make([]verifyResult, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.path.verify()
		}()
	}
	wg.Wait()
	c.path.mu.Lock()
	runs := c.path.runs
	c.path.mu.Unlock()
	for i, r := range results {
		if r != verifyAlive {
			t.Errorf("writer %d: %v, want alive", i, r)
		}
	}
	if runs == len(results) {
		t.Errorf("%d checks for %d concurrent writers: none was shared", runs, len(results))
	}
}

// The path check on a live loopback conn idle for a second: setsockopt,
// getsockopt(TCP_INFO) until the answer, setsockopt. The kernel sends the
// probe on its next timer tick, so the wait is the tick plus one round trip.
//
//	go test -run '^$' -bench 'PathCheck' -benchtime 10x .
func BenchmarkPathCheck(b *testing.B) {
	d := NewDialer()
	defer d.Close()
	c := benchPair(b, d.DialContext).(*conn)
	if !c.path.ok() {
		b.Skip("no path check on this platform")
	}
	syscalls := 0
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		time.Sleep(1100 * time.Millisecond) // idle, so the kick sends a probe at once
		b.StartTimer()
		if r := c.path.verify(); r != verifyAlive {
			b.Fatalf("verify = %v, want alive", r)
		}
		syscalls += c.path.syscalls
	}
	b.ReportMetric(float64(syscalls)/float64(b.N), "syscalls/op")
}

// verifications reads verifications_total by result.
func verifications(m *Metrics) map[string]float64 {
	v := map[string]float64{}
	for r := verifyResult(0); r < numVerifyResults; r++ {
		v[r.String()] = testutil.ToFloat64(m.verifyBy[r])
	}
	return v
}

// A sparse caller on a healthy path pays the round trip only until the path
// was seen alive after a longer idle: later calls idle less read TCP_INFO and
// go (issue 17, item 3).
func TestPathCheckSkipsKnownAlive(t *testing.T) {
	if testing.Short() {
		t.Skip("path check: skipped in -short mode (seconds of idle)")
	}
	m := NewMetrics()
	cc := bundleClient(t, startServer(t, &testsvc.Server{}), WithMetrics(m))
	mustCall(t, cc, "warm-up")
	for i, gap := range []time.Duration{1500 * time.Millisecond, 1200 * time.Millisecond, 1200 * time.Millisecond} {
		time.Sleep(gap)
		mustCall(t, cc, fmt.Sprint(i))
	}
	v := verifications(m)
	if v["alive"] != 1 || v["known_alive"] != 2 || v["stale"]+v["unanswered"] != 0 {
		t.Errorf("verifications %v after gaps of 1.5s, 1.2s, 1.2s; want alive 1 (the first), known_alive 2", v)
	}
}

// With a keepalive of 1s, the kernel's keepalive ACK comes less than a second
// before each call: the path answered recently, and no check runs. (Before,
// the kick re-armed the keepalive timer at the remainder of the second, the
// probe left only after the check's bound, and the check reported
// "unanswered" after waiting for it.)
func TestPathCheckNotAfterRecentKeepAliveACK(t *testing.T) {
	if testing.Short() {
		t.Skip("path check: skipped in -short mode (seconds of idle)")
	}
	m := NewMetrics()
	cc := bundleClient(t, startServer(t, &testsvc.Server{}), WithMetrics(m), WithKeepAlive(time.Second, time.Second, 3))
	mustCall(t, cc, "warm-up")
	for i := range 3 {
		time.Sleep(1500 * time.Millisecond)
		mustCall(t, cc, fmt.Sprint(i))
	}
	v := verifications(m)
	if v["unanswered"] != 0 || v["stale"] != 0 {
		t.Errorf("verifications %v with a 1s keepalive and gaps of 1.5s; want none unanswered", v)
	}
	if v["alive"] > 1 {
		t.Errorf("verifications %v: the keepalive ACKs did not make the path known alive", v)
	}
}

// keepIdleOf reads a conn's TCP_KEEPIDLE in seconds.
func keepIdleOf(t *testing.T, c *conn) int {
	t.Helper()
	var v int
	var err error
	if cerr := c.prober.rc.Control(func(fd uintptr) { v, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) }); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A reset after 7s of idle shortens the keepalive of every live conn and of
// new ones to 3s, and the gauge says so (issue 17, item 2).
func TestResetShortensKeepAliveOfLiveConns(t *testing.T) {
	m := NewMetrics()
	d := NewDialer(WithMetrics(m))
	defer d.Close()
	c1, _ := loopbackPair(t, d.DialContext)
	c2, _ := loopbackPair(t, d.DialContext)
	dead, live := c1.(*conn), c2.(*conn)
	if k := keepIdleOf(t, live); k != int(DefaultKeepAliveIdle/time.Second) {
		t.Fatalf("TCP_KEEPIDLE %d at dial, want %v", k, DefaultKeepAliveIdle)
	}
	dead.wakeIdle.Store(int64(7 * time.Second)) // as a write after 7s of idle
	dead.discard(Reset, 7*time.Second)          // answered with RST
	if k := keepIdleOf(t, live); k != 3 {
		t.Errorf("TCP_KEEPIDLE of a live conn %d after a reset at 7s of idle, want 3", k)
	}
	c3, _ := loopbackPair(t, d.DialContext)
	if k := keepIdleOf(t, c3.(*conn)); k != 3 {
		t.Errorf("TCP_KEEPIDLE of a new conn %d, want 3", k)
	}
	if g := testutil.ToFloat64(m.keepAlive); g != 3 {
		t.Errorf("keepalive_seconds %v, want 3", g)
	}
	// The check restores the shortened keepalive, not the one found at dial.
	live.path.verify()
	if k := keepIdleOf(t, live); k != 3 {
		t.Errorf("TCP_KEEPIDLE %d after a path check, want 3", k)
	}
}

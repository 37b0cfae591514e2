package grpcguard

import (
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
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

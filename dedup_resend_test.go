package grpcguard

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
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
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// holdProxy forwards loopback TCP connections to target, holding the n-th
// accepted connection hold(n) before it dials target: the client's TCP
// connect succeeds, and the server's HTTP/2 preface arrives only after the
// hold, as when a new connection is slow to come up (a SYN retransmitted, a
// balancer slow to pick a backend). It stops when the test ends.
type holdProxy struct {
	ln     net.Listener
	target string
	hold   func(n int) time.Duration
	done   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startHoldProxy(t testing.TB, target string, hold func(n int) time.Duration) *holdProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{ln: ln, target: target, hold: hold, done: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *holdProxy) addr() string { return p.ln.Addr().String() }

func (p *holdProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		c.Close()
		return false
	default:
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *holdProxy) accept() {
	defer p.wg.Done()
	for n := 0; ; n++ {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.forward(c, p.hold(n))
	}
}

func (p *holdProxy) forward(c net.Conn, hold time.Duration) {
	defer p.wg.Done()
	t := time.NewTimer(hold)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.done:
		return
	}
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(s) {
		c.Close()
		return
	}
	var pipes sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		defer pipes.Done()
		io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	pipes.Add(2)
	go pipe(s, c)
	go pipe(c, s)
	pipes.Wait()
}

func (p *holdProxy) close() {
	p.mu.Lock()
	close(p.done)
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}

// TestDedupResendAgeCountsTheWaitForAConnection (issue 18, item 1): the
// server keeps ids 1s; a call's reply is lost after the server ran it; the
// client's resend, decided at once, waits 1.5s for a new connection. It
// reaches the server after the outcome expired, so the server can only tell
// from the resend's age that the first attempt may have run: an age stamped
// before the wait says a few milliseconds, and the call ran twice. The age
// must be the one at which the resend left: the resend is refused, the call
// ran once.
func TestDedupResendAgeCountsTheWaitForAConnection(t *testing.T) {
	srv := &testsvc.Server{}
	addr := dedupServer(t, srv, nil, nil, dedup.WithTTL(time.Second))
	// Connection 0 teaches the client; connection 1 loses the reply of its
	// first call; connection 2, the resend's, is held 1.5s.
	fp := startProxy(t, addr, faultproxy.Config{Choose: func(n int) faultproxy.Mode {
		if n == 1 {
			return faultproxy.LostReply
		}
		return faultproxy.Pass
	}})
	var conns atomic.Int32
	hp := startHoldProxy(t, fp.Addr(), func(n int) time.Duration {
		conns.Add(1)
		if n == 2 {
			return 1500 * time.Millisecond
		}
		return 0
	})
	cc := bundleClient(t, hp.addr())
	ctx := ctxTimeout(t, 20*time.Second)
	var hdr metadata.MD
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "learn", grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if a, ok := wire.ParseAdvert(hdr); !ok || a.TTL != time.Second {
		t.Fatalf("the first call did not teach the client a 1s retention: %v", hdr)
	}
	fp.CloseAll(false) // the next call opens connection 1
	waitFor(t, 5*time.Second, "the client to see its connection closed", func() bool {
		return fp.Open() == 0 && cc.GetState() != connectivity.Ready
	})
	start := time.Now()
	_, err := testsvc.Call(ctx, cc, testsvc.Echo, "pay")
	took := time.Since(start)
	if fp.Stats().LostReplies != 1 || conns.Load() < 3 {
		t.Fatalf("the case did not arise: %d lost replies, %d connections (%v)", fp.Stats().LostReplies, conns.Load(), err)
	}
	if n := srv.Runs(testsvc.Echo, "pay"); n != 1 {
		t.Fatalf("the call ran %d times, want 1 (err %v after %v)", n, err, took)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("the resend that outlived the retention: %v, want FailedPrecondition", err)
	}
}

// fixedRetention is a MemoryStore that says it keeps ids only keep, as one
// dropping outcomes under pressure does.
type fixedRetention struct {
	*dedup.MemoryStore
	keep time.Duration
}

func (s fixedRetention) Retention(time.Duration) time.Duration { return s.keep }

// TestDedupResendAgeSubMillisecond (issue 18, item 1): against a store that
// keeps ids 500µs, a resend 600µs old is refused, one 400µs old runs (the
// id never ran here): the age is judged in microseconds, rounded up, never
// truncated to whole milliseconds, under which every resend younger than 1ms
// passed.
func TestDedupResendAgeSubMillisecond(t *testing.T) {
	ms, _ := dedup.NewMemoryStore(dedup.MemoryStoreConfig{})
	store := fixedRetention{ms, 500 * time.Microsecond}
	srv := &testsvc.Server{}
	cc := newClient(t, dedupServer(t, srv, store, nil))
	ctx := ctxTimeout(t, 5*time.Second)
	for _, c := range []struct {
		id   string
		age  time.Duration
		want codes.Code
	}{
		{"old", 600 * time.Microsecond, codes.FailedPrecondition},
		{"edge", 499*time.Microsecond + 1, codes.FailedPrecondition}, // 500µs rounded up
		{"young", 400 * time.Microsecond, codes.OK},
	} {
		v := c.id + wire.ResendParams(ms.Scope(), int64(c.age), "")
		_, err := testsvc.Call(withRequestID(ctx, v), cc, testsvc.Echo, c.id)
		if status.Code(err) != c.want {
			t.Errorf("%s: %v, want %v", v, err, c.want)
		}
	}
	if srv.Runs(testsvc.Echo, "old")+srv.Runs(testsvc.Echo, "edge") != 0 || srv.Runs(testsvc.Echo, "young") != 1 {
		t.Fatalf("runs: old %d, edge %d, young %d; want 0, 0, 1", srv.Runs(testsvc.Echo, "old"), srv.Runs(testsvc.Echo, "edge"), srv.Runs(testsvc.Echo, "young"))
	}
}

// TestDedupResendAgeWhileStoreEvicts (issue 18, item 1, the first case): a
// call's reply is lost; the resend waits 30ms for a new connection while a
// burst fills the server's store, which drops the call's outcome young (its
// retention falls to a few milliseconds). The resend, stamped before the
// wait, said it was 0ms old and ran again; stamped when it leaves, it is
// older than the store's retention and refused, and the call ran once.
func TestDedupResendAgeWhileStoreEvicts(t *testing.T) {
	store, err := dedup.NewMemoryStore(dedup.MemoryStoreConfig{MaxBytes: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	srv := &testsvc.Server{}
	addr := dedupServer(t, srv, store, nil)
	fp := startProxy(t, addr, faultproxy.Config{Choose: func(n int) faultproxy.Mode {
		if n == 1 {
			return faultproxy.LostReply
		}
		return faultproxy.Pass
	}})
	flooded := make(chan struct{})
	hp := startHoldProxy(t, fp.Addr(), func(n int) time.Duration {
		if n != 2 {
			return 0
		}
		// While the resend's connection is held, other calls' outcomes
		// fill the store.
		go func() {
			defer close(flooded)
			claim := make([]byte, wire.ClaimLen)
			wire.FillClaim(claim, wire.Fingerprint{1})
			for i, end := 0, time.Now().Add(30*time.Millisecond); time.Now().Before(end); i++ {
				key := fmt.Sprint("burst-", i)
				if _, _, err := store.Claim(context.Background(), key, claim, dedup.DefaultTTL); err != nil {
					t.Error(err)
					return
				}
				if err := store.Finish(context.Background(), key, claim, make([]byte, 1000), dedup.DefaultTTL); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		return 30 * time.Millisecond
	})
	cc := bundleClient(t, hp.addr())
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "learn"); err != nil {
		t.Fatal(err)
	}
	fp.CloseAll(false)
	waitFor(t, 5*time.Second, "the client to see its connection closed", func() bool {
		return fp.Open() == 0 && cc.GetState() != connectivity.Ready
	})
	_, err = testsvc.Call(ctx, cc, testsvc.Echo, "pay")
	<-flooded
	if fp.Stats().LostReplies != 1 {
		t.Fatalf("the case did not arise: %+v (%v)", fp.Stats(), err)
	}
	t.Logf("retention after the burst %v; the call: %v", store.Retention(dedup.DefaultTTL), err)
	if n := srv.Runs(testsvc.Echo, "pay"); n != 1 {
		t.Fatalf("the call ran %d times, want 1 (err %v)", n, err)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("the resend that outlived the retention: %v, want FailedPrecondition", err)
	}
}

// Without dedup.UnaryServerInterceptor the client never resends a non-idempotent call
// that may have reached the server: a lost reply fails the call, which ran
// once.
func TestDedupNotAssumed(t *testing.T) {
	srv := &testsvc.Server{}
	p := startProxy(t, startServer(t, srv), faultproxy.Config{Mode: faultproxy.LostReply})
	m := NewMetrics()
	cc := bundleClient(t, p.Addr(), WithMetrics(m))
	ctx := ctxTimeout(t, 10*time.Second)
	for i := range 10 {
		req := fmt.Sprintf("lost-%d", i)
		if _, err := testsvc.Call(ctx, cc, testsvc.Echo, req); status.Code(err) != codes.Unavailable {
			t.Fatalf("%s: %v, want Unavailable: its reply was lost", req, err)
		}
		if n := srv.Runs(testsvc.Echo, req); n != 1 {
			t.Fatalf("%s ran %d times, want 1", req, n)
		}
	}
	if p.Stats().LostReplies == 0 {
		t.Fatal("no reply was lost: the case did not arise")
	}
	if n := testutil.CollectAndCount(m, "grpcguard_retries_deduplicated_total"); n != 0 {
		t.Errorf("%d series of resends relying on deduplication, want none", n)
	}
}

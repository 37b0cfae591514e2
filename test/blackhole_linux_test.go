//go:build linux

package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A blackhole is a peer that vanishes without FIN or RST: a crashed host, a
// pulled cable, a firewall that starts dropping. A socket probe cannot see it,
// and a loopback proxy cannot fake it (its kernel still ACKs). These tests make
// a real one: client, router and server namespaces (internal/netns); after a
// first successful RPC the router drops everything between client and
// server, silently, so the client's kernel retransmits into silence.
//
// They need root and iproute2, and skip with one line otherwise.

// newBlackholeNet starts srv in the server namespace of a new Net and
// returns the Net and the server's address.
func newBlackholeNet(t *testing.T, srv *testsvc.Server) (*netns.Net, string) {
	t.Helper()
	n := newNetns(t)
	ln, err := n.Server.Listen("tcp", net.JoinHostPort(netns.ServerIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.ServeOn(t, srv, ln)
	return n, ln.Addr().String()
}

// blackhole makes the server vanish, and returns when it did.
func blackhole(t *testing.T, n *netns.Net) time.Time {
	t.Helper()
	if err := n.Blackhole(); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// nsClient connects to addr with opts; the first RPC must succeed.
func nsClient(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc := dial(t, addr, opts...)
	if _, err := testsvc.Call(testutil.CtxTimeout(t, 5*time.Second), cc, testsvc.Get, "warm-up"); err != nil {
		t.Fatalf("first RPC before the blackhole: %v", err)
	}
	return cc
}

// nsGuardClient connects to addr from n's client namespace with
// nsGuardOptions(sock, opts...); the first RPC must succeed. Its metrics are
// on the returned registry.
func nsGuardClient(t *testing.T, n *netns.Net, addr string, sock sockets, opts ...grpcguard.Option) (*grpc.ClientConn, *testutil.Registry) {
	t.Helper()
	m := grpcguard.NewMetrics()
	reg := testutil.NewRegistry(t, m)
	dopts, err := nsGuardOptions(n.Client, m, sock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	cc := nsClient(t, addr, dopts...)
	checkProbed(t, "grpcguard", reg)
	return cc, reg
}

// outcome is how one RPC issued into the blackhole ended.
type outcome struct {
	took time.Duration
	err  error
}

func (o outcome) String() string {
	return fmt.Sprintf("%v after %v (%v)", status.Code(o.err), o.took.Round(time.Millisecond), o.err)
}

// callInto issues an RPC now and reports how it ended on the returned channel.
func callInto(cc *grpc.ClientConn, method string, deadline time.Duration, wg *sync.WaitGroup, opts ...grpc.CallOption) <-chan outcome {
	ch := make(chan outcome, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		_, err := testsvc.Call(ctx, cc, method, "into-the-void", opts...)
		ch <- outcome{time.Since(start), err}
	}()
	return ch
}

// TestBlackhole: on a real blackhole, how an RPC in flight and an idle
// connection end (docs/measurements.md, Blackholes):
//
//   - plain grpc-go (no keepalive): the RPC hangs until its deadline;
//   - grpcguard with TCP_USER_TIMEOUT 2s (the default is 20s, too long for a
//     test): the non-idempotent Echo fails Unavailable well before the
//     deadline, the conn is counted stale with reason "error" (ETIMEDOUT);
//   - retry of an idempotent method, hedging and per-attempt timeouts with one
//     backend are no help: every attempt goes to the same dead server, so
//     the call fails, and no conn is ever dialed again;
//   - an idle grpcguard conn with TCP keepalive 1s/1s/1 and the user timeout
//     2s is dropped (counted stale, reason "error") with no RPC and no HTTP/2
//     ping.
//
// Outcomes and counts are asserted; the timings are logged.
func TestBlackhole(t *testing.T) {
	n, addr := newBlackholeNet(t, &testsvc.Server{})

	const plainDeadline = 6 * time.Second
	sock := defaultSockets
	sock.userTimeout = 2 * time.Second
	idleSock := sockets{keepIdle: time.Second, keepInterval: time.Second, keepCount: 1, userTimeout: sock.userTimeout}
	plain := nsClient(t, addr, grpc.WithContextDialer(n.Client.DialContext))
	guard, rGuard := nsGuardClient(t, n, addr, sock)
	idem, rIdem := nsGuardClient(t, n, addr, sock)
	hedge, rHedge := nsGuardClient(t, n, addr, sock, grpcguard.WithHedgeDelay(100*time.Millisecond))
	perAttempt, rPerAttempt := nsGuardClient(t, n, addr, sock, grpcguard.WithPerAttemptTimeout(300*time.Millisecond))
	_, rIdle := nsGuardClient(t, n, addr, idleSock)

	start := blackhole(t, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	plainC := callInto(plain, testsvc.Echo, plainDeadline, &wg)
	// Echo is not idempotent: after the conn dies the call may have run, so it
	// is not retried and its Unavailable reaches the caller.
	guardC := callInto(guard, testsvc.Echo, plainDeadline, &wg)
	// Get is NO_SIDE_EFFECTS: retried at once on a new conn after the old one
	// died, and the redial goes into the same blackhole.
	idemC := callInto(idem, testsvc.Get, plainDeadline, &wg)
	hedgeC := callInto(hedge, testsvc.Get, plainDeadline, &wg)
	perAttemptC := callInto(perAttempt, testsvc.Get, plainDeadline, &wg)
	idleC := make(chan time.Duration, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for stale(t, rIdle, "error") == 0 && time.Since(start) < plainDeadline {
			time.Sleep(5 * time.Millisecond)
		}
		idleC <- time.Since(start)
	}()

	g := <-guardC
	t.Logf("grpcguard, TCP_USER_TIMEOUT %v, Echo: %v", sock.userTimeout, g)
	if code := status.Code(g.err); code != codes.Unavailable {
		t.Errorf("grpcguard call ended with %v, want Unavailable: %v", code, g.err)
	}
	if g.took >= plainDeadline-time.Second {
		t.Errorf("grpcguard call took %v: the user timeout %v did not cut it short", g.took, sock.userTimeout)
	}
	if got := stale(t, rGuard, "error"); got != 1 {
		t.Errorf("stale connections with reason error = %d, want 1 (ETIMEDOUT)", got)
	}

	p := <-plainC
	t.Logf("plain grpc-go, no keepalive, Echo, deadline %v: %v", plainDeadline, p)
	if status.Code(p.err) != codes.DeadlineExceeded {
		t.Errorf("plain grpc-go ended with %v, want DeadlineExceeded: nothing should end it before its deadline", p)
	}

	// One backend: nothing a client can do moves the call off the dead
	// server. Each fails, and the only conn ever dialed is the first.
	for _, c := range []struct {
		name string
		ch   <-chan outcome
		reg  *testutil.Registry
	}{
		{"retry (Get, idempotent)", idemC, rIdem},
		{"hedge after 100ms (Get)", hedgeC, rHedge},
		{"per-attempt timeout 300ms (Get)", perAttemptC, rPerAttempt},
	} {
		o := <-c.ch
		t.Logf("grpcguard, %s, one backend: %v; retries %v, hedges %v, stale{error} %d, dials ok %v, failed %v", c.name, o,
			metric(t, c.reg, "grpcguard_retries_total", nil), metric(t, c.reg, "grpcguard_hedges_total", nil), stale(t, c.reg, "error"),
			metric(t, c.reg, "grpcguard_dials_total", map[string]string{"result": "ok"}), metric(t, c.reg, "grpcguard_dials_total", map[string]string{"result": "error"}))
		if o.err == nil {
			t.Errorf("%s: the call succeeded into a blackhole", c.name)
		}
		if dials := metric(t, c.reg, "grpcguard_dials_total", map[string]string{"result": "ok"}); dials != 1 {
			t.Errorf("%s: %v conns dialed, want 1: the server is gone", c.name, dials)
		}
	}
	if r := metric(t, rIdem, "grpcguard_retries_total", nil); r == 0 {
		t.Errorf("the idempotent call was not retried after its conn died")
	}
	if h := metric(t, rHedge, "grpcguard_hedges_total", nil); h == 0 {
		t.Errorf("no hedge was sent")
	}

	idleAt := <-idleC
	t.Logf("grpcguard idle conn, TCP keepalive 1s/1s/1 + TCP_USER_TIMEOUT %v: dropped after %v", sock.userTimeout, idleAt.Round(time.Millisecond))
	if got := stale(t, rIdle, "error"); got != 1 {
		t.Errorf("idle conn: stale connections with reason error = %d after %v, want 1: keepalive did not drop it", got, idleAt)
	}
}

// TestBlackholeDefaults measures grpcguard's true defaults (TCP_USER_TIMEOUT
// 20s, TCP keepalive 15s/5s/3) on a real blackhole: an RPC in flight fails
// Unavailable, before its deadline, and an idle conn is dropped. It takes
// about 25 s, so it runs only with GRPCGUARD_BLACKHOLE_DEFAULTS=1.
func TestBlackholeDefaults(t *testing.T) {
	if os.Getenv("GRPCGUARD_BLACKHOLE_DEFAULTS") != "1" {
		t.Skip("blackhole: set GRPCGUARD_BLACKHOLE_DEFAULTS=1 to measure the defaults (about 25 s)")
	}
	n, addr := newBlackholeNet(t, &testsvc.Server{})
	const deadline = 40 * time.Second
	busy, rBusy := nsGuardClient(t, n, addr, defaultSockets)
	_, rIdle := nsGuardClient(t, n, addr, defaultSockets)

	start := blackhole(t, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	busyC := callInto(busy, testsvc.Echo, deadline, &wg)
	for stale(t, rIdle, "error") == 0 && time.Since(start) < deadline {
		time.Sleep(10 * time.Millisecond)
	}
	idleAt := time.Since(start)
	b := <-busyC
	t.Logf("grpcguard defaults, RPC in flight (Echo): %v; stale{error}=%d", b, stale(t, rBusy, "error"))
	t.Logf("grpcguard defaults, idle conn: dropped (stale{error}=%d) after %v", stale(t, rIdle, "error"), idleAt.Round(time.Millisecond))
	if status.Code(b.err) != codes.Unavailable {
		t.Errorf("RPC ended with %v, want Unavailable", status.Code(b.err))
	}
	if errors.Is(b.err, context.DeadlineExceeded) {
		t.Errorf("RPC hit its deadline")
	}
	if got := stale(t, rBusy, "error"); got != 1 {
		t.Errorf("busy conn: stale connections with reason error = %d, want 1 (ETIMEDOUT)", got)
	}
	if got := stale(t, rIdle, "error"); got != 1 {
		t.Errorf("idle conn: stale connections with reason error = %d after %v, want 1: the defaults did not drop it", got, deadline)
	}
}

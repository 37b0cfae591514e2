//go:build linux

package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
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
	serveOn(t, srv, ln)
	return n, ln.Addr().String()
}

// blackhole makes the server vanish.
func blackhole(t *testing.T, n *netns.Net) {
	t.Helper()
	if err := n.Blackhole(); err != nil {
		t.Fatal(err)
	}
}

// nsClient connects to addr with opts; the first RPC must succeed.
func nsClient(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := testsvc.Call(ctx, cc, testsvc.Get, "warm-up"); err != nil {
		t.Fatalf("first RPC before the blackhole: %v", err)
	}
	return cc
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

// TestBlackhole measures, on a real blackhole, how long an RPC in flight and
// an idle connection take to notice that the server vanished:
//
//   - plain grpc-go (no keepalive): the RPC hangs until its deadline;
//   - grpcguard with TCP_USER_TIMEOUT 2s (the default is 20s, too long for a
//     test): the RPC fails Unavailable after about 2s, the conn is counted
//     stale with reason "error" (ETIMEDOUT);
//   - retry of an idempotent method, hedging and per-attempt timeouts with one
//     backend, logged only;
//   - an idle grpcguard conn with TCP keepalive 1s/1s and the user timeout
//     2s: dropped after about 2s, with no RPC and no HTTP/2 ping.
//
// Only robust facts are asserted; every timing is logged.
func TestBlackhole(t *testing.T) {
	n, addr := newBlackholeNet(t, &testsvc.Server{})

	const (
		userTimeout   = 2 * time.Second
		plainDeadline = 6 * time.Second
	)
	mGuard, mIdem, mIdle := NewMetrics(), NewMetrics(), NewMetrics()
	plain := nsClient(t, addr, grpc.WithContextDialer(n.Client.DialContext))
	guard := nsClient(t, addr, guardOptions(t, n.Client, WithUserTimeout(userTimeout), WithMetrics(mGuard))...)
	idem := nsClient(t, addr, guardOptions(t, n.Client, WithUserTimeout(userTimeout), WithMetrics(mIdem))...)
	hedge := nsClient(t, addr, guardOptions(t, n.Client, WithUserTimeout(userTimeout),
		WithHedgeDelay(100*time.Millisecond))...)
	perAttempt := nsClient(t, addr, guardOptions(t, n.Client, WithUserTimeout(userTimeout),
		WithPerAttemptTimeout(300*time.Millisecond))...)
	nsClient(t, addr, guardOptions(t, n.Client, WithUserTimeout(userTimeout),
		WithKeepAlive(time.Second, time.Second, 1), WithMetrics(mIdle))...)

	blackhole(t, n)
	start := time.Now()
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
		for staleCount(mIdle, SocketError) == 0 && time.Since(start) < plainDeadline {
			time.Sleep(5 * time.Millisecond)
		}
		idleC <- time.Since(start)
	}()

	g := <-guardC
	gAt := time.Since(start)
	var plainPendingThen bool
	select {
	case <-plainC:
	default:
		plainPendingThen = true
	}
	t.Logf("grpcguard, TCP_USER_TIMEOUT %v, Echo: %v; stale{error}=%d", userTimeout, g, staleCount(mGuard, SocketError))
	if code := status.Code(g.err); code != codes.Unavailable {
		t.Errorf("grpcguard call ended with %v, want Unavailable: %v", code, g.err)
	}
	if g.took >= plainDeadline-time.Second {
		t.Errorf("grpcguard call took %v: the user timeout %v did not cut it short", g.took, userTimeout)
	}
	if got := staleCount(mGuard, SocketError); got != 1 {
		t.Errorf("stale connections with reason error = %d, want 1 (ETIMEDOUT)", got)
	}
	if !plainPendingThen {
		t.Logf("plain grpc-go had already ended when grpcguard's call failed at %v", gAt)
	}

	p := <-plainC
	t.Logf("plain grpc-go, no keepalive, Echo, deadline %v: %v (pending when grpcguard failed: %v)", plainDeadline, p, plainPendingThen)
	if !plainPendingThen && status.Code(p.err) != codes.DeadlineExceeded {
		t.Errorf("plain grpc-go ended before grpcguard's call without hitting its deadline: %v", p)
	}
	t.Logf("grpcguard, TCP_USER_TIMEOUT %v, Get (idempotent, retried): %v; stale{error}=%d", userTimeout, <-idemC, staleCount(mIdem, SocketError))
	t.Logf("grpcguard, hedge after 100ms, one backend, Get: %v", <-hedgeC)
	t.Logf("grpcguard, per-attempt timeout 300ms, one backend, Get: %v", <-perAttemptC)
	t.Logf("grpcguard idle conn, TCP keepalive 1s/1s/1 + TCP_USER_TIMEOUT %v: dropped (stale{error}=%d) after %v",
		userTimeout, staleCount(mIdle, SocketError), (<-idleC).Round(time.Millisecond))
}

// TestBlackholeDefaults measures grpcguard's true defaults (TCP_USER_TIMEOUT
// 20s, TCP keepalive 15s/5s/3) on a real blackhole. It takes about 25 s, so
// it runs only with GRPCGUARD_BLACKHOLE_DEFAULTS=1.
func TestBlackholeDefaults(t *testing.T) {
	if os.Getenv("GRPCGUARD_BLACKHOLE_DEFAULTS") != "1" {
		t.Skip("blackhole: set GRPCGUARD_BLACKHOLE_DEFAULTS=1 to measure the defaults (about 25 s)")
	}
	n, addr := newBlackholeNet(t, &testsvc.Server{})
	const deadline = 40 * time.Second
	mBusy, mIdle := NewMetrics(), NewMetrics()
	busy := nsClient(t, addr, guardOptions(t, n.Client, WithMetrics(mBusy))...)
	nsClient(t, addr, guardOptions(t, n.Client, WithMetrics(mIdle))...)

	blackhole(t, n)
	start := time.Now()
	var wg sync.WaitGroup
	defer wg.Wait()
	busyC := callInto(busy, testsvc.Echo, deadline, &wg)
	var idleAt time.Duration
	for staleCount(mIdle, SocketError) == 0 && time.Since(start) < deadline {
		time.Sleep(10 * time.Millisecond)
	}
	idleAt = time.Since(start)
	b := <-busyC
	t.Logf("grpcguard defaults, RPC in flight (Echo): %v; stale{error}=%d", b, staleCount(mBusy, SocketError))
	t.Logf("grpcguard defaults, idle conn: dropped (stale{error}=%d) after %v", staleCount(mIdle, SocketError), idleAt.Round(time.Millisecond))
	if status.Code(b.err) != codes.Unavailable {
		t.Errorf("RPC ended with %v, want Unavailable", status.Code(b.err))
	}
	if errors.Is(b.err, context.DeadlineExceeded) {
		t.Errorf("RPC hit its deadline")
	}
}

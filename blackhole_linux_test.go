//go:build linux

package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// A blackhole is a peer that vanishes without FIN or RST: a crashed host, a
// pulled cable, a firewall that starts dropping. A socket probe cannot see it,
// and a loopback proxy cannot fake it (its kernel still ACKs). These tests make
// a real one: two network namespaces joined by a veth pair, the server in one,
// the clients in the other; after a first successful RPC the server's veth end
// is set down inside its namespace, so the client's kernel retransmits into
// silence (checked: tcpi_unacked 1, tcpi_retransmits climbing, no error).
//
// They need root and iproute2, and skip with a message otherwise.

// blackholeNet is a pair of namespaces made by one test.
type blackholeNet struct {
	client, server string // namespace names
	serverDev      string // the server's veth end, inside the server namespace
	serverIP       string
}

// ipCmd runs ip with args and returns its combined output on failure.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newBlackholeNet makes the namespaces, or skips the test when the machine
// does not allow it. Everything it makes is deleted when the test ends.
func newBlackholeNet(t *testing.T) *blackholeNet {
	t.Helper()
	if testing.Short() {
		t.Skip("blackhole: skipped in -short mode (needs network namespaces and takes several seconds)")
	}
	if os.Geteuid() != 0 {
		t.Skip("blackhole: skipped: needs root to create network namespaces (ip netns add)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("blackhole: skipped: the ip command (iproute2) is not installed")
	}
	pid := os.Getpid()
	n := &blackholeNet{
		client:    fmt.Sprintf("gg-bh-%d-c", pid),
		server:    fmt.Sprintf("gg-bh-%d-s", pid),
		serverDev: "bhs0",
		// A private /30 that exists only inside the two namespaces, so it
		// cannot collide with anything on the host.
		serverIP: "10.213.0.2",
	}
	if err := ipCmd("netns", "add", n.client); err != nil {
		t.Skipf("blackhole: skipped: cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() { ipCmd("netns", "delete", n.client) })
	if err := ipCmd("netns", "add", n.server); err != nil {
		t.Skipf("blackhole: skipped: cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() { ipCmd("netns", "delete", n.server) })
	// The veth ends are created directly inside the namespaces: no interface
	// ever appears in the host's namespace, so fixed names cannot collide.
	steps := [][]string{
		{"link", "add", "bhc0", "netns", n.client, "type", "veth", "peer", "name", n.serverDev, "netns", n.server},
		{"-n", n.client, "addr", "add", "10.213.0.1/30", "dev", "bhc0"},
		{"-n", n.server, "addr", "add", n.serverIP + "/30", "dev", n.serverDev},
		{"-n", n.client, "link", "set", "bhc0", "up"},
		{"-n", n.server, "link", "set", n.serverDev, "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			t.Skipf("blackhole: skipped: cannot set up the veth pair: %v", err)
		}
	}
	return n
}

// blackhole makes the server vanish: its veth end goes down, so nothing the
// client sends is answered or refused.
func (n *blackholeNet) blackhole(t *testing.T) {
	t.Helper()
	if err := ipCmd("-n", n.server, "link", "set", n.serverDev, "down"); err != nil {
		t.Fatal(err)
	}
}

// inNetns runs fn on an OS thread that has joined the network namespace ns,
// so that the sockets fn creates belong to it. The thread is never unlocked:
// Go ends it with the goroutine, so no other goroutine ever runs in ns and
// the calling thread's namespace is never touched.
func inNetns(ns string, fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/var/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", ns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		fn()
		errc <- nil
	}()
	return <-errc
}

// nsDialer wraps dial so that its socket is created in the namespace ns. The
// conn dial returns is passed on as is (for grpcguard, its own conn type).
func nsDialer(ns string, dial func(context.Context, string) (net.Conn, error)) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (c net.Conn, err error) {
		if nsErr := inNetns(ns, func() { c, err = dial(ctx, addr) }); nsErr != nil {
			return nil, nsErr
		}
		return c, err
	}
}

// plainDial is grpc-go's own dialer (internal.NetDialerWithTCPKeepalive):
// SO_KEEPALIVE with the OS's parameters (7200 s idle on Linux), no
// TCP_USER_TIMEOUT since keepalive is not configured on the channel.
func plainDial(ctx context.Context, addr string) (net.Conn, error) {
	nd := net.Dialer{
		KeepAlive: -1,
		Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
			})
		},
	}
	return nd.DialContext(ctx, "tcp", addr)
}

// startNetnsServer serves srv inside the namespace ns.
func startNetnsServer(t *testing.T, n *blackholeNet, srv *testsvc.Server) string {
	t.Helper()
	var ln net.Listener
	var err error
	if nsErr := inNetns(n.server, func() { ln, err = net.Listen("tcp", n.serverIP+":0") }); nsErr != nil {
		t.Fatal(nsErr)
	}
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, srv, ln)
	return ln.Addr().String()
}

// guardOptions is DialOptions with the Dialer dialing from namespace ns.
func guardOptions(t *testing.T, ns string, opts ...Option) []grpc.DialOption {
	t.Helper()
	dopts, err := dialOptions(opts, func(dial dialFunc) dialFunc { return nsDialer(ns, dial) })
	if err != nil {
		t.Fatal(err)
	}
	return dopts
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
	n := newBlackholeNet(t)
	addr := startNetnsServer(t, n, &testsvc.Server{})

	const (
		userTimeout   = 2 * time.Second
		plainDeadline = 6 * time.Second
	)
	mGuard, mIdem, mIdle := NewMetrics(), NewMetrics(), NewMetrics()
	plain := nsClient(t, addr, grpc.WithContextDialer(nsDialer(n.client, plainDial)))
	guard := nsClient(t, addr, guardOptions(t, n.client, WithUserTimeout(userTimeout), WithMetrics(mGuard))...)
	idem := nsClient(t, addr, guardOptions(t, n.client, WithUserTimeout(userTimeout), WithMetrics(mIdem))...)
	hedge := nsClient(t, addr, guardOptions(t, n.client, WithUserTimeout(userTimeout),
		WithHedgeDelay(100*time.Millisecond))...)
	perAttempt := nsClient(t, addr, guardOptions(t, n.client, WithUserTimeout(userTimeout),
		WithPerAttemptTimeout(300*time.Millisecond))...)
	nsClient(t, addr, guardOptions(t, n.client, WithUserTimeout(userTimeout),
		WithKeepAlive(time.Second, time.Second, 1), WithMetrics(mIdle))...)

	n.blackhole(t)
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
	n := newBlackholeNet(t)
	addr := startNetnsServer(t, n, &testsvc.Server{})
	const deadline = 40 * time.Second
	mBusy, mIdle := NewMetrics(), NewMetrics()
	busy := nsClient(t, addr, guardOptions(t, n.client, WithMetrics(mBusy))...)
	nsClient(t, addr, guardOptions(t, n.client, WithMetrics(mIdle))...)

	n.blackhole(t)
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

package grpcguard

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/dialroute"
	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
)

// countingDial is a user's dial function that records every address it got
// and every conn it returned; wrap, when set, is applied to each conn.
type countingDial struct {
	wrap func(net.Conn) net.Conn

	mu    sync.Mutex
	addrs []string
	conns map[net.Conn]bool
}

func (f *countingDial) dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := dialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	if f.wrap != nil {
		c = f.wrap(c)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs = append(f.addrs, addr)
	if f.conns == nil {
		f.conns = map[net.Conn]bool{}
	}
	f.conns[c] = true
	return c, nil
}

func (f *countingDial) made(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns[c]
}

func (f *countingDial) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.addrs)
}

// socketConn is a user's conn type that is not a *net.TCPConn but exposes its
// socket; hiddenConn exposes nothing but net.Conn.
type socketConn struct{ *net.TCPConn }
type hiddenConn struct{ net.Conn }

var _ syscall.Conn = socketConn{}

// tcpOf returns the socket beneath a conn of these types.
func tcpOf(c net.Conn) *net.TCPConn {
	switch c := c.(type) {
	case socketConn:
		return c.TCPConn
	case hiddenConn:
		return c.Conn.(*net.TCPConn)
	case dialroute.NoSocket:
		return tcpOf(c.Conn)
	}
	return c.(*net.TCPConn)
}

// Behind a proxy that closes idle connections with FIN, every RPC through
// DialOptions with WithDialFunc succeeds, every conn grpc used came from the
// dial function (the conn behind each RPC's peer address), and every close
// was found and counted as the Dialer's own conns are.
func TestDialFuncEveryConnComesFromIt(t *testing.T) {
	p := startProxy(t, startServer(t, &testsvc.Server{}), faultproxy.Config{Mode: faultproxy.FINAfterIdle, Idle: proxyIdle})
	f := &countingDial{wrap: func(c net.Conn) net.Conn { return socketConn{c.(*net.TCPConn)} }}
	m := NewMetrics()
	dopts, err := DialOptions(WithDialFunc(f.dial), WithMetrics(m), WithProbeAfterIdle(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, p.Addr(), dopts...)
	for round := range 2 {
		for i, gap := range idleGaps {
			time.Sleep(gap)
			var pr peer.Peer
			if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x", grpc.Peer(&pr)); err != nil {
				t.Fatalf("round %d call %d after %v idle: %v", round, i, gap, err)
			}
			ca, ok := pr.LocalAddr.(*connAddr)
			if !ok || !f.made(ca.c.Conn) {
				t.Fatalf("round %d call %d ran on %T %v, not on a conn of the dial function", round, i, pr.LocalAddr, pr.LocalAddr)
			}
		}
	}
	cc.Close()
	st := p.Stats()
	if st.Closes() == 0 {
		t.Fatal("the proxy closed nothing: the scenario did not happen")
	}
	if n := f.count(); int64(n) != st.Accepted || n != int(testutil.ToFloat64(m.dialOK)) {
		t.Fatalf("dial function made %d conns, the server side accepted %d, dials_total{ok} = %v", n, st.Accepted, testutil.ToFloat64(m.dialOK))
	}
	for _, a := range f.addrs {
		if a != p.Addr() {
			t.Fatalf("dial function got %q, want grpc's address %q as given", a, p.Addr())
		}
	}
	waitFor(t, 5*time.Second, "every close to be counted", func() bool { return int64(staleCount(m, PeerClosed)) >= st.Closes() })
	if n := testutil.ToFloat64(m.unprobed); n != 0 {
		t.Fatalf("connections_unprobed_total = %v for conns that expose their socket", n)
	}
}

// The peer's FIN on a dial function's conn is found before the next write
// when the conn exposes its socket; the write is refused and nothing sent.
// A conn that hides its socket is counted as unprobed, and the write goes to
// the kernel.
func TestDialFuncPeerCloseFoundBeforeWrite(t *testing.T) {
	for _, tc := range []struct {
		name    string
		wrap    func(net.Conn) net.Conn
		exposed bool
	}{
		{"socket exposed", func(c net.Conn) net.Conn { return socketConn{c.(*net.TCPConn)} }, true},
		{"socket hidden", func(c net.Conn) net.Conn { return hiddenConn{c} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &countingDial{wrap: tc.wrap}
			m := NewMetrics()
			d := NewDialer(WithDialFunc(f.dial), WithMetrics(m), WithProbeAfterIdle(time.Millisecond))
			defer d.Close()
			nc, s := loopbackPair(t, d.DialContext)
			c := nc.(*conn)
			s.Close()
			// Wait on the socket itself, not through c (which would act on it).
			rc, err := tcpOf(c.Conn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "the FIN to arrive", func() bool {
				var r probeResult
				rc.Control(func(fd uintptr) { r = probeFD(fd) })
				return r == probePeerClosed
			})
			waitFor(t, time.Second, "the conn to be idle", func() bool { return c.probeDue(nanotime()) })
			n, err := c.Write([]byte("request"))
			if unprobed := testutil.ToFloat64(m.unprobed); tc.exposed != (unprobed == 0) {
				t.Fatalf("connections_unprobed_total = %v", unprobed)
			}
			if !tc.exposed {
				if err != nil {
					t.Fatalf("Write on a conn that hides its socket = %v: nothing can see the FIN", err)
				}
				return
			}
			var se *StaleConnError
			if n != 0 || !errors.As(err, &se) || se.Reason != PeerClosed || se.Op != "write" {
				t.Fatalf("Write = %d, %v; want 0 and a peer_closed StaleConnError from write", n, err)
			}
			if f.count() != 1 {
				t.Fatalf("dial function called %d times, want 1", f.count())
			}
		})
	}
}

// Calls issued right after the peer closed an idle conn made by a dial
// function: with its socket exposed, the probe before the pick finds the FIN
// first and the call goes to a new conn, as with the Dialer's own conns
// (TestE2EWindowAfterPeerClose); with the socket hidden nothing can, and
// grpc's reader wins or loses the race (logged).
func TestDialFuncWindowAfterPeerClose(t *testing.T) {
	const rpcs, quiet = 50, 20 * time.Millisecond
	for _, tc := range []struct {
		name    string
		wrap    func(net.Conn) net.Conn
		exposed bool
	}{
		{"socket exposed", func(c net.Conn) net.Conn { return socketConn{c.(*net.TCPConn)} }, true},
		{"socket hidden", func(c net.Conn) net.Conn { return hiddenConn{c} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, startServer(t, &testsvc.Server{}), faultproxy.Config{})
			f := &countingDial{wrap: tc.wrap}
			m := NewMetrics()
			dopts, err := DialOptions(WithDialFunc(f.dial), WithMetrics(m), WithProbeAfterIdle(quiet/4))
			if err != nil {
				t.Fatal(err)
			}
			ok := windowRun(t, newClient(t, p.Addr(), dopts...), p, false, rpcs, quiet)
			found := testutil.ToFloat64(m.probeStale)
			t.Logf("%s: %d/%d calls right after the FIN succeeded; probes found %v closes; unprobed conns %v",
				tc.name, ok, rpcs, found, testutil.ToFloat64(m.unprobed))
			if !tc.exposed {
				return
			}
			if ok*100 < rpcs*99 || found == 0 {
				t.Fatalf("%d/%d succeeded with %v closes found by the probe; want at least 99%% and the probe finding them", ok, rpcs, found)
			}
		})
	}
}

// A dial function's error is the dial's, counted; a conn returned with an
// error is closed; a nil conn without an error is refused; nil is invalid.
func TestDialFuncErrors(t *testing.T) {
	if _, err := DialOptions(WithDialFunc(nil)); err == nil || err.Error() != "grpcguard: invalid option: WithDialFunc(nil): must not be nil" {
		t.Fatalf("WithDialFunc(nil): %v", err)
	}
	boom := errors.New("boom")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var returned net.Conn
	for _, tc := range []struct {
		name string
		f    func(context.Context, string) (net.Conn, error)
		want error
	}{
		{"error", func(context.Context, string) (net.Conn, error) { return nil, boom }, boom},
		{"conn and error", func(ctx context.Context, a string) (net.Conn, error) {
			c, err := dialTCP(ctx, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			returned = c
			return c, boom
		}, boom},
		{"nil conn", func(context.Context, string) (net.Conn, error) { return nil, nil }, dialroute.ErrNoConn},
	} {
		m := NewMetrics()
		d := NewDialer(WithDialFunc(tc.f), WithMetrics(m))
		if _, err := d.DialContext(context.Background(), "any:1"); !errors.Is(err, tc.want) {
			t.Errorf("%s: dial = %v, want %v", tc.name, err, tc.want)
		}
		if n := testutil.ToFloat64(m.dialErr); n != 1 {
			t.Errorf("%s: dials_total{result=error} = %v, want 1", tc.name, n)
		}
		d.Close()
	}
	if _, err := returned.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the conn returned with an error is open: write = %v", err)
	}
}

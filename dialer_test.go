package grpcguard

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// dialPair dials a raw loopback listener through d and returns both ends.
func dialPair(t *testing.T, d *Dialer) (*conn, *net.TCPConn) {
	c, s := loopbackPair(t, d.DialContext)
	return c.(*conn), s
}

// waitPeerGone waits until the kernel has the peer's FIN or RST for c,
// looking at the socket without going through c (which would act on it).
func waitPeerGone(t *testing.T, c *conn) {
	t.Helper()
	rc, err := c.Conn.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the peer's close to arrive", func() bool {
		var r probeResult
		rc.Control(func(fd uintptr) { r = probeFD(fd) })
		return r == probePeerClosed || r == probeDraining || r == probeReset
	})
}

func TestWriteAfterIdleOnPeerClosedConnIsRefused(t *testing.T) {
	m := NewMetrics()
	d := NewDialer(WithMetrics(m), WithProbeAfterIdle(time.Millisecond))
	defer d.Close()
	c, s := dialPair(t, d)
	s.CloseWrite() // the peer is gone for writing, but would still read what we send
	waitPeerGone(t, c)
	waitFor(t, time.Second, "the conn to be idle", func() bool { return c.probeDue(nanotime()) })

	n, err := c.Write([]byte("request"))
	if n != 0 || !errors.Is(err, ErrStaleConn) {
		t.Fatalf("Write = %d, %v; want 0 and ErrStaleConn", n, err)
	}
	var se *StaleConnError
	if !errors.As(err, &se) || se.Reason != PeerClosed || se.Op != "write" {
		t.Fatalf("Write error = %#v, want a peer_closed StaleConnError from write", err)
	}
	// Nothing was sent, and the socket is closed: the peer reads a bare EOF.
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(s)
	if len(got) != 0 || err != nil {
		t.Fatalf("peer read %q, %v; want nothing and EOF", got, err)
	}
	if _, err := c.Conn.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("socket write after refusal = %v, want net.ErrClosed: the socket must be closed", err)
	}
	if n := staleCount(m, PeerClosed); n != 1 {
		t.Fatalf("stale_connections_total{reason=peer_closed} = %d, want 1", n)
	}
	if n := testutil.ToFloat64(m.probeStale); n != 1 {
		t.Fatalf("probes_total{result=stale} = %v, want 1", n)
	}
}

func TestWriteOnBusyConnIsNotProbed(t *testing.T) {
	m := NewMetrics()
	d := NewDialer(WithMetrics(m), WithProbeAfterIdle(time.Hour))
	defer d.Close()
	c, s := dialPair(t, d)
	s.Close()
	waitPeerGone(t, c)
	// Not idle long enough: the write goes to the kernel, which accepts it.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("Write = %v", err)
	}
	if n := testutil.ToFloat64(m.probeStale) + testutil.ToFloat64(m.probeAlive); n != 0 {
		t.Fatalf("probes = %v, want none on a conn that is not idle", n)
	}
}

func TestReaderSeesPeerCloseCountsOnce(t *testing.T) {
	m := NewMetrics()
	d := NewDialer(WithMetrics(m))
	defer d.Close()
	c, s := dialPair(t, d)
	s.SetLinger(0)
	s.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("Read after the peer's RST succeeded")
	}
	c.Read(make([]byte, 1))
	c.Write([]byte("x"))
	if r, e := staleCount(m, Reset), staleCount(m, PeerClosed)+staleCount(m, SocketError); r != 1 || e != 0 {
		t.Fatalf("stale counts: reset %d, others %d; want 1 and 0", r, e)
	}
}

func TestLocalCloseIsNotStale(t *testing.T) {
	m := NewMetrics()
	d := NewDialer(WithMetrics(m))
	defer d.Close()
	c, _ := dialPair(t, d)
	done := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); done <- err }()
	c.Close()
	<-done
	if n := staleTotal(m); n != 0 {
		t.Fatalf("stale connections = %d after a local close, want 0", n)
	}
	if v := testutil.ToFloat64(m.open); v != 0 {
		t.Fatalf("connections_open = %v after close, want 0", v)
	}
}

func TestDialerAddressForms(t *testing.T) {
	srv := &testsvc.Server{}
	dir := t.TempDir()
	abs := filepath.Join(dir, "abs.sock")
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, filepath.Join(dir, "rel.sock"))
	if err != nil {
		t.Skip("no relative path to the temp dir:", err)
	}
	listen := func(network, addr string) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Skipf("listen %s %s: %v", network, addr, err)
		}
		serveOn(t, srv, ln)
	}
	tcp4 := startServer(t, srv)
	listen("unix", abs)
	listen("unix", rel)
	abstract := "grpcguard-test-" + strings.ReplaceAll(t.Name(), "/", "-") + time.Now().Format("150405.000000")
	if runtime.GOOS == "linux" {
		listen("unix", "@"+abstract)
	}
	targets := map[string]string{
		"ipv4":            "passthrough:///" + tcp4,
		"unix absolute":   "unix://" + abs,
		"unix relative":   "unix:" + rel,
		"unix abstract":   "unix-abstract:" + abstract,
		"dialer unix:///": "passthrough:///unix://" + abs,
	}
	// The IPv6 form, bracketed, without leaving 127.0.0.1: an IPv4-mapped
	// IPv6 address.
	_, port, _ := net.SplitHostPort(tcp4)
	targets["ipv6 form"] = "passthrough:///[::ffff:127.0.0.1]:" + port
	if runtime.GOOS != "linux" {
		delete(targets, "unix abstract")
	}
	for name, target := range targets {
		t.Run(name, func(t *testing.T) {
			m := NewMetrics()
			d := NewDialer(WithMetrics(m))
			defer d.Close()
			cc := newClientTarget(t, target, d)
			if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "hi"); err != nil {
				t.Fatalf("call over %s: %v", target, err)
			}
			if n := testutil.ToFloat64(m.dialOK); n != 1 {
				t.Fatalf("dials_total{result=ok} = %v, want 1: the call did not go through the dialer", n)
			}
		})
	}
}

func TestSweepClosesStaleIdleConns(t *testing.T) {
	m := NewMetrics()
	d := NewDialer(WithMetrics(m), WithSweepInterval(5*time.Millisecond), WithProbeAfterIdle(time.Millisecond))
	c, s := dialPair(t, d)
	s.Close()
	waitFor(t, 5*time.Second, "the sweep to find the stale conn", func() bool { return staleCount(m, PeerClosed) == 1 })
	if c.state.Load() != stateStale {
		t.Fatalf("state = %d, want stale", c.state.Load())
	}
	c.Close() // grpc would: the sweep stops with the last conn
	d.Close()
}

func TestInvalidDialerOptionFailsDials(t *testing.T) {
	d := NewDialer(WithProbeAfterIdle(-time.Second), WithKeepAlive(time.Second, 0, 1))
	_, err := d.DialContext(context.Background(), "127.0.0.1:1")
	if !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("dial error = %v, want ErrInvalidOption", err)
	}
	for _, want := range []string{"WithProbeAfterIdle(-1s)", "WithKeepAlive(0s)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestClosedDialerRefusesDials(t *testing.T) {
	d := NewDialer()
	d.Close()
	if _, err := d.DialContext(context.Background(), "127.0.0.1:1"); !errors.Is(err, ErrDialerClosed) {
		t.Fatalf("dial after Close = %v, want ErrDialerClosed", err)
	}
}

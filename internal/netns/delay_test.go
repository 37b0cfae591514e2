//go:build linux

package netns

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newDelayed builds a Delayed for one test, or skips with one line.
func newDelayed(t *testing.T, oneWay time.Duration) *Delayed {
	t.Helper()
	d, err := NewDelayed(oneWay)
	if errors.Is(err, ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
		for _, ns := range []Namespace{d.Client, d.Server} {
			if _, err := os.Stat(ns.Path()); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still exists after Close: %v", ns, err)
			}
		}
	})
	return d
}

// dialWire dials an echo server in d's server namespace from its client
// namespace.
func dialWire(t *testing.T, d *Delayed) net.Conn {
	t.Helper()
	ln, err := d.Server.Listen("tcp", net.JoinHostPort(DelayServerIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	c, err := d.Client.DialContext(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rtts returns n echo round trips on c, sorted.
func rtts(t *testing.T, c net.Conn, n int) []time.Duration {
	t.Helper()
	var out []time.Duration
	for range n {
		start := time.Now()
		if err := roundTrip(c, "x"); err != nil {
			t.Fatal(err)
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out
}

// TestDelayedRoundTrip: with 10 ms each way a TCP echo takes at least 20 ms
// and well under 40 ms, and the server sees the client's wire address.
func TestDelayedRoundTrip(t *testing.T) {
	d := newDelayed(t, 10*time.Millisecond)
	c := dialWire(t, d)
	if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != DelayClientIP {
		t.Fatalf("the client dialed from %s, want %s", got, DelayClientIP)
	}
	rt := rtts(t, c, 20)
	t.Logf("echo round trip with 10ms each way: min %v, p50 %v, max %v", rt[0], rt[len(rt)/2], rt[len(rt)-1])
	if rt[0] < 20*time.Millisecond || rt[len(rt)-1] >= 40*time.Millisecond {
		t.Fatalf("round trips %v..%v, want within [20ms, 40ms)", rt[0], rt[len(rt)-1])
	}
}

// TestDelayedCopierLatency measures what the copier adds to the one-way
// delay: the round trip over a wire with 0 and with 10 ms each way, against
// the same echo over loopback. It fails only if the copier adds more than a
// millisecond each way at the median.
func TestDelayedCopierLatency(t *testing.T) {
	const n = 200
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	lc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	lo := rtts(t, lc, n)[n/2]
	zero := rtts(t, dialWire(t, newDelayed(t, 0)), n)[n/2]
	ten := rtts(t, dialWire(t, newDelayed(t, 10*time.Millisecond)), 50)[25]
	t.Logf("echo p50: loopback %v; wire 0 each way %v (the copier adds %v per round trip); wire 10ms each way %v (%v above 20ms)",
		lo, zero, zero-lo, ten, ten-20*time.Millisecond)
	if extra := ten - 20*time.Millisecond; extra > 2*time.Millisecond {
		t.Fatalf("the copier adds %v per round trip at 10ms each way, want at most 2ms", extra)
	}
}

// TestDelayedKeepaliveCrosses: a kernel keepalive probe, forced on a socket
// idle past 1 s by setting TCP_KEEPIDLE=1, crosses the wire and its ACK
// comes back after the round trip: TCP_INFO's last_ack_recv is still old a
// few milliseconds after the kick and fresh once the round trip is over.
func TestDelayedKeepaliveCrosses(t *testing.T) {
	d := newDelayed(t, 10*time.Millisecond)
	c := dialWire(t, d)
	if err := roundTrip(c, "x"); err != nil {
		t.Fatal(err)
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	info := func() *unix.TCPInfo {
		var ti *unix.TCPInfo
		var gerr error
		if err := rc.Control(func(fd uintptr) { ti, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
			t.Fatal(err)
		}
		if gerr != nil {
			t.Fatal(gerr)
		}
		return ti
	}
	time.Sleep(1500 * time.Millisecond)
	before := info().Last_ack_recv
	if before < 1400 {
		t.Fatalf("last ACK %d ms ago after 1.5 s idle", before)
	}
	kick := time.Now()
	var serr error
	rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 1)
	})
	if serr != nil {
		t.Fatal(serr)
	}
	// The probe leaves on the kernel's next timer tick (up to 4 ms at
	// HZ=250) and its ACK is back 20 ms later: at 12 ms it is not.
	time.Sleep(12*time.Millisecond - time.Since(kick))
	if early := info().Last_ack_recv; early < before {
		t.Fatalf("an ACK arrived %v after the kick, before a 20 ms round trip could end (last ACK %d ms ago)", time.Since(kick), early)
	}
	deadline := kick.Add(time.Second)
	for time.Now().Before(deadline) {
		ti := info()
		if age := time.Duration(ti.Last_ack_recv) * time.Millisecond; age < time.Since(kick) {
			back := time.Since(kick) - age
			t.Logf("the probe's ACK came back about %v after the kick (ms resolution)", back)
			if back < 20*time.Millisecond-time.Millisecond {
				t.Fatalf("the probe's ACK came back %v after the kick, under the 20 ms round trip", back)
			}
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("no ACK of a keepalive probe came back within 1 s")
}

package grpcguard

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// tcpPair returns a connected client and server TCP conn on loopback.
func tcpPair(t testing.TB) (client, server *net.TCPConn) {
	c, s := loopbackPair(t, dialTCP)
	return c.(*net.TCPConn), s
}

// staleReasonOf returns the reason of a stale Probe result, or fails.
func staleReasonOf(t *testing.T, err error) StaleReason {
	t.Helper()
	if !errors.Is(err, ErrStaleConn) {
		t.Fatalf("Probe = %v, want an error matching ErrStaleConn", err)
	}
	var se *StaleConnError
	if !errors.As(err, &se) {
		t.Fatalf("Probe = %v, not a *StaleConnError", err)
	}
	return se.Reason
}

// waitStale probes c until it reports stale (the peer's FIN or RST takes a
// few microseconds to arrive) and returns the result.
func waitStale(t *testing.T, c net.Conn) error {
	t.Helper()
	var err error
	waitFor(t, 5*time.Second, "the probe to see the peer's close", func() bool {
		err = Probe(c)
		return err != nil
	})
	return err
}

func linuxOnly(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("FIN behind unread data and FIN/RST distinction need Linux POLLRDHUP")
	}
}

func TestProbeLiveIdleConn(t *testing.T) {
	c, _ := tcpPair(t)
	if err := Probe(c); err != nil {
		t.Fatalf("Probe of a live idle conn = %v, want nil", err)
	}
}

func TestProbeDataPendingIsAliveAndNotConsumed(t *testing.T) {
	c, s := tcpPair(t)
	if _, err := s.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "data to arrive", func() bool { return pending(t, c) })
	for range 3 {
		if err := Probe(c); err != nil {
			t.Fatalf("Probe with data pending = %v, want nil", err)
		}
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read after probes = %q, %v; want all of \"hello\"", buf, err)
	}
}

func TestProbePeerFIN(t *testing.T) {
	c, s := tcpPair(t)
	s.Close()
	if r := staleReasonOf(t, waitStale(t, c)); r != PeerClosed {
		t.Fatalf("reason = %v, want peer_closed", r)
	}
}

func TestProbePeerShutdownWrite(t *testing.T) {
	c, s := tcpPair(t)
	s.CloseWrite()
	if r := staleReasonOf(t, waitStale(t, c)); r != PeerClosed {
		t.Fatalf("reason = %v, want peer_closed", r)
	}
}

func TestProbePeerRST(t *testing.T) {
	linuxOnly(t)
	c, s := tcpPair(t)
	s.SetLinger(0)
	s.Close()
	if r := staleReasonOf(t, waitStale(t, c)); r != Reset {
		t.Fatalf("reason = %v, want reset", r)
	}
}

func TestProbeDataThenFIN(t *testing.T) {
	linuxOnly(t)
	c, s := tcpPair(t)
	s.Write([]byte("last words"))
	s.Close()
	if r := staleReasonOf(t, waitStale(t, c)); r != PeerClosed {
		t.Fatalf("reason = %v, want peer_closed", r)
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "last words" {
		t.Fatalf("data in front of the FIN = %q, %v; want it intact", b, err)
	}
}

func TestProbeBesideBlockedReader(t *testing.T) {
	c, s := tcpPair(t)
	readerIn := make(chan struct{})
	readerDone := make(chan error, 1)
	go func() {
		close(readerIn)
		_, err := c.Read(make([]byte, 1))
		readerDone <- err
	}()
	<-readerIn
	// Let the reader park in the runtime poller holding the fd's read lock.
	waitFor(t, 5*time.Second, "the reader to block", func() bool { return goroutineBlockedInRead() })
	probed := make(chan error, 1)
	go func() { probed <- Probe(c) }()
	select {
	case err := <-probed:
		if err != nil {
			t.Fatalf("Probe beside a blocked reader = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Probe blocked behind the reader: it must not take the read lock")
	}
	s.Close()
	if r := staleReasonOf(t, waitStale(t, c)); r != PeerClosed {
		t.Fatalf("reason = %v, want peer_closed", r)
	}
	if err := <-readerDone; err != io.EOF {
		t.Fatalf("reader got %v, want EOF: the probe must leave the FIN for the reader", err)
	}
}

func TestProbeIgnoresReadDeadline(t *testing.T) {
	c, s := tcpPair(t)
	c.SetReadDeadline(time.Now().Add(-time.Second))
	if err := Probe(c); err != nil {
		t.Fatalf("Probe with an expired read deadline = %v, want nil", err)
	}
	s.Close()
	staleReasonOf(t, waitStale(t, c))
}

func TestProbeTLSConn(t *testing.T) {
	c, s := tcpPair(t)
	cert := selfSigned(t)
	srv := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
	cli := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.HandshakeContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// TLS 1.3 servers send session tickets after the handshake: pending data
	// that must read as alive and stay intact.
	if err := Probe(cli); err != nil {
		t.Fatalf("Probe of a live TLS conn = %v, want nil", err)
	}
	go srv.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(cli, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("TLS read after probe = %q, %v", buf, err)
	}
	s.Close()
	if r := staleReasonOf(t, waitStale(t, cli)); r != PeerClosed {
		t.Fatalf("reason = %v, want peer_closed", r)
	}
}

func TestProbeUnixConn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if err := Probe(c); err != nil {
		t.Fatalf("Probe of a live unix conn = %v", err)
	}
	s.Close()
	if r := staleReasonOf(t, waitStale(t, c)); r != PeerClosed {
		t.Fatalf("reason = %v, want peer_closed", r)
	}
}

func TestProbeUnprobeableConnIsAlive(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	b.Close()
	if err := Probe(a); err != nil {
		t.Fatalf("Probe of a net.Pipe = %v, want nil (cannot probe: alive)", err)
	}
}

func TestProbeClosedConnReportsClosed(t *testing.T) {
	c, _ := tcpPair(t)
	c.Close()
	if err := Probe(c); err == nil || errors.Is(err, ErrStaleConn) {
		t.Fatalf("Probe of a locally closed conn = %v, want a non-stale error", err)
	}
}

func TestProbeDialerConnAllocatesNothing(t *testing.T) {
	d := NewDialer()
	defer d.Close()
	c, s := dialPair(t, d)
	if n := testing.AllocsPerRun(100, func() { Probe(c) }); n != 0 {
		t.Fatalf("Probe of a dialer conn allocates %v times, want 0", n)
	}
	s.Close()
	staleReasonOf(t, waitStale(t, c))
}

// pending reports whether c has unread data, via the probe's own poll.
func pending(t *testing.T, c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	rc.Control(func(fd uintptr) { n = bytesReadable(fd) })
	return n > 0
}

// goroutineBlockedInRead reports whether some goroutine is parked in the
// network poller (a blocked Read).
func goroutineBlockedInRead() bool {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return bytes.Contains(buf[:n], []byte("[IO wait]"))
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

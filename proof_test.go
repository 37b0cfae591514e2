package grpcguard

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// The proof that an attempt never left the client rests on facts: its own
// conn, closed, with no write in flight or begun since the attempt started.
// These tests are the cases where something else was once taken as proof.

// A server (or a middle tier relaying a downstream error after its own side
// effects) can send any status text, including grpc-go's own words for a
// stream it did not process. The text proves nothing: a non-idempotent call
// that got it is not resent.
func TestProofIgnoresStatusText(t *testing.T) {
	for _, text := range []string{
		"the connection is draining",
		"stream terminated by RST_STREAM with error code: REFUSED_STREAM",
	} {
		t.Run(text, func(t *testing.T) {
			srv := &testsvc.Server{Unary: func(context.Context, string, string) (string, error) {
				return "", status.Error(codes.Unavailable, text)
			}}
			m := NewMetrics()
			cc := bundleClient(t, startServer(t, srv), WithMetrics(m))
			_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "side effect")
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("Echo = %v, want the server's Unavailable", err)
			}
			if n := srv.Runs(testsvc.Echo, "side effect"); n != 1 {
				t.Errorf("the server ran the call %d times, want 1", n)
			}
			if n := testutil.CollectAndCount(m.retries); n != 0 {
				t.Errorf("%d retry series, want none", n)
			}
		})
	}
}

// grpc-go itself resends, transparently and once, a stream the server refused
// with REFUSED_STREAM (RFC 9113 8.7 promises it was not processed); grpcguard
// relies on that and adds no attempt of its own for a non-idempotent call.
// The server here is raw HTTP/2 that refuses every stream.
func TestProofLeavesRefusedStreamsToGRPC(t *testing.T) {
	addr, headers := startRefusingServer(t)
	cc := bundleClient(t, addr)
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "REFUSED_STREAM") {
		t.Fatalf("Echo = %v, want Unavailable from a refused stream", err)
	}
	if n := headers.Load(); n != 2 {
		t.Errorf("the server saw %d streams, want 2: the call and grpc-go's one transparent resend", n)
	}
}

// An attempt that runs out of its per-attempt timeout while grpc's writer is
// blocked in a Write that began before the attempt (the peer stopped reading
// and the socket buffers are full) has its frames queued behind that write:
// they go out when it completes. The conn is open, so nothing is proven and
// the non-idempotent call is not resent.
func TestProofWriterBlocked(t *testing.T) {
	srv := &testsvc.Server{}
	// A server window wide enough for the whole request: grpc's writer is
	// held by the socket, not by flow control.
	big := grpc.InitialWindowSize(8 << 20)
	p := startProxy(t, startServer(t, srv, big, grpc.InitialConnWindowSize(8<<20)), faultproxy.Config{ClientRcvBuf: 64 << 10})
	m := NewMetrics()
	var gc atomic.Pointer[conn]
	dopts, err := dialOptions([]Option{WithMetrics(m), WithPerAttemptTimeout(300 * time.Millisecond)}, func(dial dialFunc) dialFunc {
		return func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := dial(ctx, addr)
			if c, ok := c.(*conn); ok {
				c.Conn.(*net.TCPConn).SetWriteBuffer(4096)
				gc.Store(c)
			}
			return c, err
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, p.Addr(), dopts...)
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "warm-up"); err != nil {
		t.Fatal(err)
	}
	c := gc.Load()

	p.SetStall(true)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer p.SetStall(false)
	wg.Add(1)
	go func() { // fills the buffers, then blocks grpc's writer
		defer wg.Done()
		testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, strings.Repeat("b", 1<<20), WithRetryDisabled())
	}()
	waitFor(t, 5*time.Second, "grpc's writer to block in one Write", func() bool {
		return c.writing.Load() != 0 && nanotime()-c.lastWrite.Load() > int64(100*time.Millisecond)
	})

	victimStart := nanotime()
	_, err = testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "victim")
	if c.lastWrite.Load() >= victimStart {
		t.Fatal("a write began during the victim's attempt: the writer was not blocked, the case did not arise")
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("victim = %v, want DeadlineExceeded from its per-attempt timeout", err)
	}
	if n := testutil.CollectAndCount(m.retries); n != 0 {
		t.Errorf("the victim was resent (%d retry series), though its frames were still queued", n)
	}
	p.SetStall(false)
	wg.Wait()
	// Whatever was queued has gone out: the server ran the victim at most once.
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "after"); err != nil {
		t.Fatal(err)
	}
	if n := srv.Runs(testsvc.Echo, "victim"); n > 1 {
		t.Errorf("the server ran the victim %d times", n)
	}
}

// Two conns with the same local address string (unix client sockets are all
// unnamed): each attempt is judged by its own conn, never by another that
// happens to print the same.
func TestProofSharedLocalAddress(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := NewDialer()
	defer d.Close()
	dial := func() (*conn, net.Conn) {
		c, err := d.DialContext(context.Background(), "unix://"+path)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c.(*conn), s
	}
	wrote, _ := dial()
	quiet, _ := dial()
	if wrote.LocalAddr().String() != quiet.LocalAddr().String() {
		t.Fatalf("local addresses %q and %q differ: the case does not arise", wrote.LocalAddr(), quiet.LocalAddr())
	}
	start := nanotime()
	if _, err := wrote.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	wrote.discard(Reset, -1)
	quiet.discard(Reset, -1)
	judge := func(c *conn) verdict {
		return verdictOf(start, &peer.Peer{Addr: c.RemoteAddr(), LocalAddr: c.LocalAddr()})
	}
	if v := judge(wrote); v.neverLeft || !v.connDied {
		t.Errorf("the conn that wrote: %+v, want may have left, conn died", v)
	}
	if v := judge(quiet); !v.neverLeft || !v.connDied {
		t.Errorf("the quiet conn: %+v, want never left, conn died", v)
	}
}

// A probe that finds the peer's FIN behind unread data (a reply grpc's reader
// has not read yet) refuses new writes but leaves the socket to the reader:
// the reply is still delivered, then the EOF.
func TestProofReplyBehindFINIsDelivered(t *testing.T) {
	m := NewMetrics()
	d := NewDialer(WithMetrics(m))
	defer d.Close()
	nc, s := dialPair(t, d)
	c := nc
	if _, err := s.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	waitPeerGone(t, c)

	err := Probe(c)
	var se *StaleConnError
	if !errors.As(err, &se) || se.Reason != PeerClosed {
		t.Fatalf("Probe = %v, want peer_closed", err)
	}
	if n, err := c.Write([]byte("new request")); n != 0 || !errors.Is(err, ErrStaleConn) {
		t.Fatalf("Write = %d, %v; want refused with ErrStaleConn", n, err)
	}
	got, err := io.ReadAll(c)
	if string(got) != "reply" || err != nil {
		t.Fatalf("read %q, %v; want the reply, then EOF", got, err)
	}
	if n := staleTotal(m); n != 1 {
		t.Errorf("stale connections counted %d, want 1", n)
	}
	// Nothing of the refused write reached the peer.
	s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _ := s.Read(make([]byte, 16)); n != 0 {
		t.Errorf("the peer received %d bytes of a refused write", n)
	}
}

// startRefusingServer serves raw HTTP/2 on 127.0.0.1: it answers the
// client's SETTINGS and PINGs and refuses every stream with
// RST_STREAM(REFUSED_STREAM), counting the streams (HEADERS frames).
func startRefusingServer(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var headers atomic.Int32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	const (
		frameHeaders  = 0x1
		frameRST      = 0x3
		frameSettings = 0x4
		framePing     = 0x6
		flagAck       = 0x1
		refusedStream = 0x7
	)
	frame := func(typ, flags byte, stream uint32, payload []byte) []byte {
		b := make([]byte, 9, 9+len(payload))
		b[0], b[1], b[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
		b[3], b[4] = typ, flags
		binary.BigEndian.PutUint32(b[5:], stream)
		return append(b, payload...)
	}
	serve := func(c net.Conn) {
		defer wg.Done()
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, 24)); err != nil { // the client preface
			return
		}
		if _, err := c.Write(frame(frameSettings, 0, 0, nil)); err != nil {
			return
		}
		hdr := make([]byte, 9)
		for {
			if _, err := io.ReadFull(c, hdr); err != nil {
				return
			}
			payload := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
			if _, err := io.ReadFull(c, payload); err != nil {
				return
			}
			stream := binary.BigEndian.Uint32(hdr[5:]) &^ (1 << 31)
			var reply []byte
			switch typ, flags := hdr[3], hdr[4]; {
			case typ == frameSettings && flags&flagAck == 0:
				reply = frame(frameSettings, flagAck, 0, nil)
			case typ == framePing && flags&flagAck == 0:
				reply = frame(framePing, flagAck, 0, payload)
			case typ == frameHeaders:
				headers.Add(1)
				reply = frame(frameRST, 0, stream, binary.BigEndian.AppendUint32(nil, refusedStream))
			}
			if reply != nil {
				if _, err := c.Write(reply); err != nil {
					return
				}
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go serve(c)
		}
	}()
	return ln.Addr().String(), &headers
}

// NewDialer and UnaryClientRetry compose in any chain order, with or without
// the Dialer's interceptor: a call whose idle conn a middlebox resets on the
// first bytes is resent at once, not after a backoff, because the attempt
// finds its own conn dead. The backoff function counts its calls: it must
// never be asked. Retirement is off here (WithMaxIdle(0)): it would keep calls
// off those conns, and this test is about the retry. The latencies are logged
// for the record (run without -race); the promise is "no backoff".
func TestComposeRetryWithDialerInAnyOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("composition: skipped in -short mode")
	}
	const (
		calls = 25
		idle  = 30 * time.Millisecond
	)
	var backoffs atomic.Int32
	countBackoff := WithBackoffFunc(func(context.Context, uint) time.Duration {
		backoffs.Add(1)
		return time.Second
	})
	run := func(t *testing.T, mode faultproxy.Mode, chain func(d *Dialer) []grpc.UnaryClientInterceptor) []time.Duration {
		srv := &testsvc.Server{}
		p := startProxy(t, startServer(t, srv), faultproxy.Config{Mode: mode, Idle: idle})
		d := NewDialer(WithMaxIdle(0))
		t.Cleanup(func() { d.Close() })
		cc := newClient(t, p.Addr(), grpc.WithContextDialer(d.DialContext), grpc.WithDisableRetry(),
			grpc.WithChainUnaryInterceptor(chain(d)...))
		if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "warm-up"); err != nil {
			t.Fatal(err)
		}
		lat := make([]time.Duration, 0, calls)
		for i := range calls {
			time.Sleep(idle + idle/3) // the conn is now idle past the proxy's limit
			start := time.Now()
			if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "g"); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			lat = append(lat, time.Since(start))
		}
		if mode != faultproxy.Pass && p.Stats().RSTs < calls/2 {
			t.Fatalf("the proxy reset %d conns for %d calls: the case did not arise", p.Stats().RSTs, calls)
		}
		return lat
	}
	p99 := func(d []time.Duration) time.Duration {
		slices.Sort(d)
		return d[len(d)*99/100]
	}
	for name, chain := range map[string]func(d *Dialer) []grpc.UnaryClientInterceptor{
		"retry then dialer": func(d *Dialer) []grpc.UnaryClientInterceptor {
			return []grpc.UnaryClientInterceptor{UnaryClientRetry(countBackoff), d.UnaryClientInterceptor()}
		},
		"dialer then retry": func(d *Dialer) []grpc.UnaryClientInterceptor {
			return []grpc.UnaryClientInterceptor{d.UnaryClientInterceptor(), UnaryClientRetry(countBackoff)}
		},
		"retry alone": func(d *Dialer) []grpc.UnaryClientInterceptor {
			return []grpc.UnaryClientInterceptor{UnaryClientRetry(countBackoff)}
		},
	} {
		t.Run(name, func(t *testing.T) {
			backoffs.Store(0)
			clean := p99(run(t, faultproxy.Pass, chain))
			reset := p99(run(t, faultproxy.ResetFirstBytesAfterIdle, chain))
			t.Logf("p99 of %d calls after idle: fault-free %v, reset on the first bytes and resent %v", calls, clean, reset)
			if n := backoffs.Load(); n != 0 {
				t.Errorf("the backoff was consulted %d times: a dead conn must be retried at once", n)
			}
		})
	}
}

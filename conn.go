package grpcguard

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Connection states. A conn goes from open to stale (a probe or the reader
// found the peer gone, and the socket is closed or closing) to released (its
// owner, grpc, called Close); or from open straight to released.
const (
	stateOpen int32 = iota
	stateStale
	stateReleased
)

// epoch anchors the monotonic clock the conns use; an int64 of nanoseconds
// since it fits in an atomic, unlike a time.Time.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// conn is a connection made by a Dialer. It probes itself before the first
// Write after idle, refuses to write on a stale socket, and records when it
// last sent, which lets the retry interceptor prove that an attempt never
// left the client.
type conn struct {
	net.Conn // *net.TCPConn or *net.UnixConn
	d        *Dialer
	local    string // LocalAddr().String(), as grpc's peer.Peer reports it
	rcErr    error
	prober   prober

	lastActive atomic.Int64 // nanotime of the last write, read with data, or probe
	lastSent   atomic.Int64 // nanotime at which the last Write reaching the socket began
	state      atomic.Int32
	reason     atomic.Int32 // StaleReason once found stale, -1 before
	released   chan struct{}
	closeOnce  sync.Once
}

func newConn(d *Dialer, c net.Conn) *conn {
	cc := &conn{Conn: c, d: d, released: make(chan struct{})}
	if la := c.LocalAddr(); la != nil {
		cc.local = la.String()
	}
	if sc, ok := c.(syscall.Conn); ok {
		rc, err := sc.SyscallConn()
		if err == nil {
			cc.prober.init(rc)
		}
		cc.rcErr = err
	}
	cc.reason.Store(-1)
	now := nanotime()
	cc.lastActive.Store(now)
	cc.lastSent.Store(now)
	return cc
}

// SyscallConn returns the raw socket, so that channelz and users can read its
// options; grpcguard's own socket options are already set on it.
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	if c.prober.rc == nil {
		return nil, c.rcErr
	}
	return c.prober.rc, nil
}

// idleSince reports whether the conn has been idle at least the dialer's
// probe-after-idle time at now.
func (c *conn) idle(now int64) bool {
	return now-c.lastActive.Load() >= int64(c.d.cfg.probeAfterIdle)
}

// probe polls the socket. A stale result closes the socket (once) and is
// counted.
func (c *conn) probe() error {
	r, err := c.prober.probe()
	if err != nil {
		if c.state.Load() != stateOpen {
			return &StaleConnError{Reason: StaleReason(c.reason.Load()), Op: "probe", Err: net.ErrClosed}
		}
		return err
	}
	stale := r.err()
	c.d.cfg.metrics.probed(stale != nil)
	if stale == nil {
		c.lastActive.Store(nanotime())
		return nil
	}
	c.discard(stale.(*StaleConnError).Reason)
	return stale
}

// discard marks the conn stale for reason, counts it once, and closes the
// socket, so that grpc's reader fails at once and grpc releases the conn. The
// conn stays registered until grpc calls Close.
func (c *conn) discard(reason StaleReason) {
	if c.markStale(reason) {
		c.Conn.Close()
	}
}

// markStale moves an open conn to stale and counts it. It reports whether this
// call did so: a conn is counted once, whoever finds it first.
func (c *conn) markStale(reason StaleReason) bool {
	if !c.state.CompareAndSwap(stateOpen, stateStale) {
		return false
	}
	c.reason.Store(int32(reason))
	c.d.cfg.metrics.staleConn(reason)
	return true
}

// Write probes the socket first if the conn has been idle; on a stale socket
// it sends nothing, closes the socket and returns an error matching
// ErrStaleConn. grpc's transport then fails and redials; a write error on a
// socket left open would instead leave grpc's transport stuck.
func (c *conn) Write(b []byte) (int, error) {
	now := nanotime()
	if c.idle(now) {
		if err := c.probe(); err != nil {
			if se := (*StaleConnError)(nil); errors.As(err, &se) {
				return 0, &StaleConnError{Reason: se.Reason, Op: "write", Err: se.Err}
			}
			// The probe could not run (the conn was closed): let the write
			// report it.
		}
	}
	c.lastSent.Store(now)
	c.lastActive.Store(now)
	n, err := c.Conn.Write(b)
	if err != nil {
		c.noteIOError(err)
	}
	return n, err
}

// Read records activity and counts a peer close that the reader meets first.
func (c *conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.lastActive.Store(nanotime())
	}
	if err != nil {
		c.noteIOError(err)
	}
	return n, err
}

// noteIOError counts a read or write error that shows the peer closed or broke
// the connection; errors from closing it ourselves and deadlines are not.
func (c *conn) noteIOError(err error) {
	if c.state.Load() != stateOpen {
		return
	}
	var reason StaleReason
	switch {
	case errors.Is(err, io.EOF):
		reason = PeerClosed
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		reason = Reset
	case errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrDeadlineExceeded):
		return
	default:
		reason = SocketError
	}
	c.markStale(reason)
}

// Close releases the conn: grpc calls it once its transport is done with the
// conn, after the subchannel has left READY.
func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		prev := c.state.Swap(stateReleased)
		err = c.Conn.Close()
		if prev == stateStale && errors.Is(err, net.ErrClosed) {
			err = nil // discard closed the socket already
		}
		c.d.release(c)
		close(c.released)
	})
	return err
}

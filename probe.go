package grpcguard

import (
	"crypto/tls"
	"errors"
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
)

// ErrStaleConn is matched, with errors.Is, by every error that reports a
// connection the peer closed or broke: a failed Probe, a Write the Dialer's
// connection refused, and the StaleConnError those carry.
var ErrStaleConn = errors.New("grpcguard: stale connection")

// StaleReason says how a connection went stale. Its String form is the reason
// label of grpcguard_stale_connections_total.
type StaleReason uint8

const (
	// PeerClosed: the peer sent FIN (close or shutdown(SHUT_WR)).
	PeerClosed StaleReason = iota
	// Reset: the peer sent RST, or the socket holds an error.
	Reset
	// SocketError: a read or write failed with another error, such as
	// ETIMEDOUT after TCP_USER_TIMEOUT or keepalive gave up.
	SocketError

	numStaleReasons
)

// String returns "peer_closed", "reset" or "error".
func (r StaleReason) String() string {
	switch r {
	case PeerClosed:
		return "peer_closed"
	case Reset:
		return "reset"
	default:
		return "error"
	}
}

// StaleConnError reports a stale connection. It matches ErrStaleConn.
type StaleConnError struct {
	Reason StaleReason
	// Op is what found it: "probe" (a probe before the pick or by the
	// sweep), "write" (the probe before a write after idle refused the
	// write; nothing was sent) or "verify" (the path check before a write
	// after idle met a reset: the path forgot the connection; the write was
	// refused and nothing was sent).
	Op string
	// Err is the socket error behind it, if any.
	Err error
}

func (e *StaleConnError) Error() string {
	msg := "grpcguard: stale connection (" + e.Reason.String() + ") found by " + e.Op
	if e.Op == "write" {
		msg += "; nothing was sent"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is reports whether target is ErrStaleConn.
func (e *StaleConnError) Is(target error) bool { return target == ErrStaleConn }

// Unwrap returns the socket error behind e, if any.
func (e *StaleConnError) Unwrap() error { return e.Err }

// probeResult is what one poll of a socket says.
type probeResult int32

const (
	probeAlive probeResult = iota // nothing pending, or data pending: usable
	probePeerClosed
	probeDraining // FIN behind unread data (Linux): no new writes, let the reader drain
	probeReset
	probeUnknown // cannot tell on this platform or for this conn: treated as alive
)

func (r probeResult) err() error {
	switch r {
	case probePeerClosed, probeDraining:
		return &StaleConnError{Reason: PeerClosed, Op: "probe"}
	case probeReset:
		return &StaleConnError{Reason: Reset, Op: "probe"}
	}
	return nil
}

// Probe reports whether the peer of c has closed or reset the connection,
// without reading from it: it consumes no byte, never blocks, ignores read
// deadlines and does not take the read lock, so it is safe while another
// goroutine is blocked in c.Read. It returns nil for a live connection (even
// with unread data pending), an error matching ErrStaleConn carrying a
// *StaleConnError when the peer closed (PeerClosed, also seen behind unread
// data on Linux) or reset (Reset) it, or the error that kept it from looking
// at the socket (for example net.ErrClosed for a conn closed locally).
//
// Probe looks at *net.TCPConn, *net.UnixConn and any syscall.Conn, at the conn
// beneath a *tls.Conn, and at the conns of a Dialer (without allocating). On a
// Dialer's conn a stale result also acts: the conn refuses further writes and
// is counted; its socket is closed at once, unless the peer's FIN sits behind
// data not yet read (a reply on its way to grpc's reader), which is left to
// be read first. A conn Probe cannot look at is reported alive. Linux tells
// FIN from RST with poll(2) POLLRDHUP; other unix systems peek at one byte
// only when the socket is readable, so a FIN behind unread data reads as alive
// there; on Windows, Probe reports every conn alive and TCP keepalive must
// catch a dead peer.
func Probe(c net.Conn) error {
	for {
		switch cc := c.(type) {
		case *conn:
			return cc.probe()
		case *tls.Conn:
			c = cc.NetConn()
			continue
		case syscall.Conn:
			rc, err := cc.SyscallConn()
			if err != nil {
				return nil
			}
			var r probeResult
			if err := rc.Control(func(fd uintptr) { r = probeFD(fd) }); err != nil {
				return err
			}
			return r.err()
		}
		return nil
	}
}

// prober probes one socket with a callback bound once, so that a probe
// allocates nothing: RawConn.Control only takes a reference on the fd, never
// its read lock, so it answers while grpc's reader is blocked in Read.
type prober struct {
	rc     syscall.RawConn
	run    func(fd uintptr) // p.poll, bound at creation
	result probeResult      // written by run; owned by whoever holds busy
	busy   atomic.Bool
	last   atomic.Int32 // the latest result, for callers that found busy set
}

func (p *prober) init(rc syscall.RawConn) {
	p.rc = rc
	p.run = p.poll
}

func (p *prober) poll(fd uintptr) { p.result = probeFD(fd) }

// probe polls the socket once. Concurrent callers do not poll twice: a caller
// that finds a probe under way waits for its one syscall and shares its
// result.
func (p *prober) probe() (probeResult, error) {
	if p.rc == nil {
		return probeUnknown, nil
	}
	if !p.busy.CompareAndSwap(false, true) {
		for p.busy.Load() {
			runtime.Gosched()
		}
		return probeResult(p.last.Load()), nil
	}
	err := p.rc.Control(p.run)
	r := p.result
	if err != nil {
		r = probeUnknown
	}
	p.last.Store(int32(r))
	p.busy.Store(false)
	return r, err
}

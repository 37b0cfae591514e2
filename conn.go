package grpcguard

import (
	"cmp"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/grpcguard/grpcguard/internal/dialroute"
)

// Connection states. A conn leaves open for good, to one of:
//   - draining: the peer sent FIN behind data grpc has not read yet; writes
//     are refused, the socket stays open so grpc's reader can deliver the
//     data, then meets the EOF and closes the transport;
//   - stale: found closed or broken; the socket is closed;
//   - retired: closed by the Dialer for having been idle past the idle
//     horizon, before anything could find it dead;
//
// and from any of them to released, once its owner, grpc, called Close.
const (
	stateOpen int32 = iota
	stateDraining
	stateStale
	stateRetired
	stateReleased
)

// errRetired refuses a write on a conn the Dialer retired for idleness.
var errRetired = errors.New("grpcguard: connection retired after idle (past the idle horizon); nothing was sent")

// epoch anchors the monotonic clock the conns use; an int64 of nanoseconds
// since it fits in an atomic, unlike a time.Time. Monotonic readings never
// decrease, across goroutines and CPUs, which the write protocol relies on.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// conn is a connection made by a Dialer. Before the first Write after idle it
// probes itself, and after a longer idle it verifies the path; it refuses to
// write on a stale socket; it publishes every write, which lets an attempt
// prove it never left the client; and it tells the Dialer how long it had
// been idle when it died.
type conn struct {
	net.Conn // *net.TCPConn or *net.UnixConn
	d        *Dialer
	addr     *connAddr // what LocalAddr returns: how an attempt finds this conn
	rcErr    error
	prober   prober
	path     pathCheck // the keepalive round trip after idle (Linux TCP)

	// lastIO is the nanotime of the last Write or of the last Read that
	// returned data. probedAt is when a probe last found the socket alive;
	// it postpones the next probe, not the idle age.
	lastIO   atomic.Int64
	probedAt atomic.Int64
	// lastActive is lastIO without the reads nothing asked for: the last
	// Write, or the last Read that answered one (awaiting) or belongs to an
	// open stream. A GOAWAY that a proxy sends as it closes an idle conn is
	// not activity: the conn's data idle at death is the proxy's timeout.
	// unasked is the nanotime of the latest read that was not activity.
	lastActive atomic.Int64
	unasked    atomic.Int64
	// The write protocol (see Write): writing counts Writes between
	// publishing and returning; lastWrite is the largest nanotime at which a
	// Write that may reach the socket began (0: none yet).
	writing   atomic.Int32
	lastWrite atomic.Int64
	// wakeIdle is how long the conn had carried no data before the latest
	// Write that ended an idle period, and wakePath how long its path had
	// been silent then (when read), until data is read back: if the conn
	// dies in between, that idle period killed it (a middlebox that forgot
	// the flow answers the first bytes with RST); if data comes back, the
	// path was alive after that idle.
	wakeIdle atomic.Int64
	wakePath atomic.Int64
	// awaiting: the last I/O was a write, so a reply may be on its way.
	awaiting atomic.Bool
	// used: an attempt ended on this conn, so grpc's handshake on it is
	// done; a conn not yet used is never retired.
	used atomic.Bool

	state     atomic.Int32
	reason    atomic.Int32 // StaleReason once found dead, -1 before
	released  chan struct{}
	closeOnce sync.Once
}

func newConn(d *Dialer, c net.Conn) *conn {
	cc := &conn{Conn: c, d: d, released: make(chan struct{})}
	la := c.LocalAddr()
	if la == nil {
		la = &net.UnixAddr{Net: c.RemoteAddr().Network()}
	}
	cc.addr = &connAddr{Addr: la, c: cc}
	if sc, ok := c.(syscall.Conn); ok {
		rc, err := sc.SyscallConn()
		if err == nil && rc != nil {
			cc.prober.init(rc)
			cc.path.init(rc) // TCP sockets only: it checks
		}
		cc.rcErr = err
	}
	cc.reason.Store(-1)
	now := nanotime()
	cc.lastIO.Store(now)
	cc.lastActive.Store(now)
	cc.probedAt.Store(now)
	return cc
}

// LocalAddr returns the socket's local address, as a net.Addr of grpcguard's
// that also identifies this conn (see handoff.go). Its Network and String
// are the socket's.
func (c *conn) LocalAddr() net.Addr { return c.addr }

// SyscallConn returns the raw socket, so that channelz and users can read its
// options; grpcguard's own socket options are already set on it.
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	if c.prober.rc == nil {
		// Never (nil, nil): grpc's channelz would use the nil RawConn.
		return nil, cmp.Or(c.rcErr, dialroute.ErrNoSocket)
	}
	return c.prober.rc, nil
}

// probeDue reports whether the conn has been quiet (no I/O, no probe) for the
// probe-after-idle time at now.
func (c *conn) probeDue(now int64) bool {
	return now-max(c.lastIO.Load(), c.probedAt.Load()) >= int64(c.d.cfg.probeAfterIdle)
}

// probe polls the socket. A conn found closed or reset is marked stale and
// its socket closed (once); one whose peer sent FIN behind unread data is
// marked draining and left to grpc's reader. Either is counted and reported
// as a *StaleConnError.
func (c *conn) probe() error {
	r, err := c.prober.probe()
	if err != nil {
		if c.state.Load() != stateOpen {
			return &StaleConnError{Reason: c.staleReason(), Op: "probe", Err: net.ErrClosed}
		}
		return err
	}
	switch r {
	case probeUnknown: // nothing was looked at: not counted
		c.probedAt.Store(nanotime())
		return nil
	case probeAlive:
		c.d.cfg.metrics.probed(false)
		c.probedAt.Store(nanotime())
		return nil
	case probeDraining:
		c.d.cfg.metrics.probed(true)
		c.markDead(PeerClosed, stateDraining, -1)
		return &StaleConnError{Reason: PeerClosed, Op: "probe"}
	}
	c.d.cfg.metrics.probed(true)
	reason := PeerClosed
	if r == probeReset {
		reason = Reset
	}
	c.discard(reason, -1)
	return &StaleConnError{Reason: reason, Op: "probe"}
}

func (c *conn) staleReason() StaleReason {
	if r := c.reason.Load(); r >= 0 {
		return StaleReason(r)
	}
	return SocketError
}

// discard marks the conn stale for reason, counts it once, and closes the
// socket, so that grpc's reader fails at once and grpc releases the conn. The
// conn stays registered until grpc calls Close.
func (c *conn) discard(reason StaleReason, path time.Duration) {
	if c.markDead(reason, stateStale, path) {
		c.Conn.Close()
	}
}

// markDead moves an open conn to state (draining or stale), records why and
// counts it, and tells the Dialer how long the conn had been idle. It reports
// whether this call did so: a conn is counted once, whoever finds it first.
// The state changes before anything else: the write protocol relies on it.
// path is the conn's path idle when the caller read it, or < 0.
func (c *conn) markDead(reason StaleReason, state int32, path time.Duration) bool {
	if !c.state.CompareAndSwap(stateOpen, state) {
		return false
	}
	c.reason.Store(int32(reason))
	c.d.cfg.metrics.staleConn(reason)
	now := nanotime()
	d := idleDeath{kind: deathReset, at: now}
	d.idle = time.Duration(c.wakeIdle.Load())
	if d.idle == 0 {
		d.idle = time.Duration(now - c.lastActive.Load())
	}
	if path < 0 {
		if w := c.wakePath.Load(); w != 0 {
			path = time.Duration(w)
		} else if p, ok := c.socketPathIdle(); ok {
			path = p
		} else {
			path = d.idle
		}
	}
	d.path = path
	if reason == PeerClosed {
		d.kind = deathClosed
		if u := c.unasked.Load(); u > c.lastActive.Load() && now-u < int64(announceWindow) {
			d.kind = deathAnnounced
		}
	}
	if c.d.horizon.observe(d) {
		c.d.applyKeepAlive()
	}
	c.d.nextCheck.Store(0) // the horizon may have shrunk
	if h := c.d.cfg.hooks.OnStaleConn; h != nil {
		h(StaleConnEvent{Local: c.Conn.LocalAddr(), Remote: c.Conn.RemoteAddr(), Reason: reason, Idle: d.idle})
	}
	c.d.reportHorizon()
	return true
}

// noteAnnouncedClose counts, in the idle-age histogram, a conn that grpc
// closes because the peer announced it would (a GOAWAY, read as data nobody
// asked for, moments before): an L7 proxy closing idle conns. grpc closes such
// a conn itself, often before the FIN behind the GOAWAY arrives, so it is
// never found dead; its idle age is still the proxy's timeout.
func (c *conn) noteAnnouncedClose() {
	now := nanotime()
	u, active := c.unasked.Load(), c.lastActive.Load()
	if u <= active || now-u >= int64(announceWindow) {
		return
	}
	c.d.horizon.observe(idleDeath{idle: time.Duration(u - active), kind: deathAnnounced, at: now})
}

// announceWindow: a FIN this soon after data nobody asked for (a GOAWAY)
// was announced by it. nginx and HAProxy send the FIN right after the
// GOAWAY, far inside this window.
const announceWindow = 50 * time.Millisecond

func (c *conn) socketPathIdle() (time.Duration, bool) {
	if c.prober.rc == nil || !c.path.ok() {
		return 0, false
	}
	return socketPathIdle(c.prober.rc)
}

// retire closes an open conn that has outlived the idle horizon and carries
// nothing: the Dialer checked that no call or stream of its own is in flight
// (Dialer.calls, Dialer.streams); the conn has been used by an attempt, so grpc's
// handshake on it is over; and no Write is in flight. It reports whether it
// did. A Write racing with it is refused by the write protocol, and the
// attempt behind it provably never left.
func (c *conn) retire(fixed bool) bool {
	if !c.used.Load() || c.writing.Load() != 0 || !c.state.CompareAndSwap(stateOpen, stateRetired) {
		return false
	}
	c.d.cfg.metrics.retired(fixed)
	c.Conn.Close()
	if h := c.d.cfg.hooks.OnConnRetired; h != nil {
		h(ConnRetiredEvent{Local: c.Conn.LocalAddr(), Remote: c.Conn.RemoteAddr(), Learned: !fixed})
	}
	return true
}

// died reports whether the conn was found dead or retired: a new connection
// is then the cure for a failed attempt. A conn grpc closed on its own (a
// GOAWAY, the ClientConn closing) did not die.
func (c *conn) died() bool {
	s := c.state.Load()
	return s == stateDraining || s == stateStale || s == stateRetired || c.reason.Load() >= 0
}

// quietSince reports whether no byte written on the conn at or after start
// can ever reach the socket: the conn can no longer write, no Write was in
// flight, and none began at or after start. The order of the loads is the
// proof; see Write.
func (c *conn) quietSince(start int64) bool {
	if c.state.Load() == stateOpen {
		return false // it can still write what grpc has queued
	}
	if c.writing.Load() != 0 {
		return false
	}
	return c.lastWrite.Load() < start
}

// Write checks the conn first if it has been idle (see checkAfterIdle); on a
// conn that is stale it sends nothing, closes the socket and returns an error
// matching ErrStaleConn, so that grpc's transport fails and redials (an error
// on a socket left open would leave the transport stuck).
//
// The write protocol, which lets an attempt prove that none of its bytes can
// ever reach the socket (conn.quietSince):
//
//	Write:   (w1) writing++  (w2) if state != open: writing--, refuse
//	         (w3) lastWrite = max(lastWrite, now)  (w4) syscall  (w5) writing--
//	checker: (c1) state != open  (c2) writing == 0  (c3) lastWrite < start
//
// now is read when Write is entered, so a Write carrying bytes produced
// after an attempt's start has now >= start (the monotonic clock). Go's
// atomics are sequentially consistent and a conn never returns to open. If
// such a Write reached its syscall, w2 read open before the store that left
// open, which the checker's c1 saw; so w1 comes before c2. Either the Write
// had not finished at c2 (c2 fails), or w3 came before w5, before c2, before
// c3, and lastWrite only grows (c3 fails). A Write refused at w2 sent nothing
// and recorded nothing. The checks before w1 (probe, path check) send no
// payload and are not writes.
func (c *conn) Write(b []byte) (int, error) {
	now := nanotime()
	if idle := now - c.lastIO.Load(); (idle >= c.d.checkAfter || idle >= int64(minIdleDeath)) && c.state.Load() == stateOpen {
		if idle >= c.d.checkAfter {
			if err := c.checkAfterIdle(now, time.Duration(idle)); err != nil {
				return 0, err
			}
		}
		if active := now - c.lastActive.Load(); active >= int64(minIdleDeath) {
			c.wakeIdle.Store(active) // a death before the answer is this idle's
		}
	}
	c.writing.Add(1)
	if s := c.state.Load(); s != stateOpen {
		c.writing.Add(-1)
		switch s {
		case stateReleased:
			return 0, net.ErrClosed
		case stateRetired:
			return 0, errRetired
		}
		return 0, &StaleConnError{Reason: c.staleReason(), Op: "write"}
	}
	for {
		last := c.lastWrite.Load()
		if now <= last || c.lastWrite.CompareAndSwap(last, now) {
			break
		}
	}
	c.lastIO.Store(now)
	c.lastActive.Store(now)
	if !c.awaiting.Load() {
		c.awaiting.Store(true)
	}
	n, err := c.Conn.Write(b)
	c.writing.Add(-1)
	if err != nil {
		c.noteIOError(err)
	}
	return n, err
}

// checkAfterIdle runs before the first Write after idle: a probe when one is
// due, then, when the path has been silent at least WithVerifyAfterIdle and
// longer than the Dialer knows to be safe, the path check (a keepalive round
// trip). It returns the error that refuses the Write, having sent nothing.
func (c *conn) checkAfterIdle(now int64, idle time.Duration) error {
	if c.probeDue(now) {
		if err := c.probe(); err != nil {
			var se *StaleConnError
			if errors.As(err, &se) {
				return &StaleConnError{Reason: se.Reason, Op: "write", Err: se.Err}
			}
			return nil // the probe could not run (closed): the write reports it
		}
	}
	v := c.d.cfg.verifyAfterIdle
	if v <= 0 || idle < v || !c.path.ok() {
		return nil
	}
	path, ok := c.path.pathIdle()
	if !ok {
		return nil // closed meanwhile: the write reports it
	}
	h := c.d.horizon
	if heard := idle - path; heard >= time.Second {
		// A packet came a second or more after the conn's last data and
		// carried none: the answer to a keepalive probe, which left when the
		// path had been silent the keepalive idle.
		h.sawAlive(min(heard, h.keepAliveIdle()), now)
	}
	c.wakePath.Store(int64(max(path, 1)))
	switch {
	case path < v:
		return nil // the path answered less than v ago (a keepalive ACK)
	case h.knownAlive(path):
		c.d.cfg.metrics.verified(verifyKnownAlive, 0)
		return nil
	}
	return c.verifyPath(path)
}

// verifyPath runs the path check on a conn whose path has been silent for
// path, and acts on its answer.
func (c *conn) verifyPath(path time.Duration) error {
	start := nanotime()
	r := c.path.verify()
	end := nanotime()
	c.d.cfg.metrics.verified(r, time.Duration(end-start))
	switch r {
	case verifyAlive:
		c.probedAt.Store(end)
		c.d.horizon.sawAlive(path, end)
		return nil
	case verifyStale:
		c.discard(Reset, path)
		return &StaleConnError{Reason: Reset, Op: "verify", Err: syscall.ECONNRESET}
	}
	return nil
}

// Read records activity and counts a peer close that the reader meets first.
func (c *conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		now := nanotime()
		c.lastIO.Store(now)
		if c.awaiting.Load() || c.d.streams.Load() > 0 {
			c.lastActive.Store(now)
			if c.wakeIdle.Load() != 0 {
				c.wakeIdle.Store(0) // the path answered after the idle period
			}
			if w := c.wakePath.Load(); w != 0 {
				c.wakePath.Store(0)
				c.d.horizon.sawAlive(time.Duration(w), now)
			}
			if c.awaiting.Load() {
				c.awaiting.Store(false)
			}
		} else {
			c.unasked.Store(now)
		}
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
	c.markDead(reason, stateStale, -1)
}

// Close releases the conn: grpc calls it once its transport is done with the
// conn, after the subchannel has left READY.
func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		prev := c.state.Swap(stateReleased)
		if prev == stateOpen {
			c.noteAnnouncedClose()
		}
		err = c.Conn.Close()
		if (prev == stateStale || prev == stateRetired) && errors.Is(err, net.ErrClosed) {
			err = nil // closed already, by discard or retire
		}
		c.d.release(c)
		close(c.released)
	})
	return err
}

package grpcguard

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/grpcguard/grpcguard/internal/dialroute"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
)

// ErrDialerClosed is returned by DialContext after Dialer.Close.
var ErrDialerClosed = errors.New("grpcguard: dialer closed")

// releaseWait bounds how long an RPC waits, after a stale conn was closed,
// for grpc to release it and take its subchannel out of READY. grpc does so
// within a couple of milliseconds of the socket closing (measured in
// docs/measurements.md); the bound leaves a wide margin.
const releaseWait = 10 * time.Millisecond

// Dialer dials connections for grpc.WithContextDialer that can be probed for a
// peer close, refuse to write on a stale socket, and are counted. Its
// interceptors probe idle connections before an RPC picks a transport.
//
// A Dialer serves one grpc.ClientConn: its interceptors probe every
// connection the Dialer made. It is safe for concurrent use.
type Dialer struct {
	cfg config
	err error // invalid options: every dial fails with it
	// router obtains the sockets: from the dial function, through a proxy
	// (its Proxy is set only when the Dialer proxies), or with its
	// net.Dialer, which carries the socket options.
	router dialroute.Router

	// checkAfter is the idle time after which a conn's Write checks it
	// first: the shorter of the probe-after-idle and verify-after-idle times.
	checkAfter int64
	horizon    *idleHorizon

	// What the Dialer's interceptors know of the RPCs in flight: calls
	// counts unary attempts between the check before the pick and the
	// invoker's return, streams the streams from creation to end. A conn is
	// retired only when neither counts anything but the attempt asking (see
	// scan). counting is set once both interceptors exist: without them
	// nothing is known, and nothing is retired.
	//
	// calls is written twice by every unary attempt: it has a cache line of
	// its own, so that the per-RPC reads of nextCheck and the per-Read load
	// of streams do not miss because of it.
	_           [64]byte
	calls       atomic.Int64
	_           [56]byte
	streams     atomic.Int64
	countUnary  atomic.Bool
	countStream atomic.Bool

	// live is the snapshot of open conns the per-RPC path reads without a
	// lock; it is replaced, under mu, whenever a conn comes or goes.
	live atomic.Pointer[[]*conn]
	// nextCheck is a nanotime before which no live conn can be due for a
	// probe or for retirement: the pick path skips the scan until then, so
	// it costs a clock read and an atomic load however many conns there are.
	// It is a lower bound (conns only get younger by I/O); register and
	// release reset it to 0.
	nextCheck atomic.Int64

	mu        sync.Mutex
	closed    bool
	sweepStop chan struct{} // non-nil while a sweep goroutine runs
	sweeps    sync.WaitGroup

	// What reportHorizon last told Hooks.OnIdleHorizon.
	hookMu   sync.Mutex
	reported IdleHorizonEvent
}

// NewDialer returns a Dialer configured by opts. Invalid options do not
// panic: every DialContext then fails with an error matching
// ErrInvalidOption that names them (DialOptions reports them at once).
func NewDialer(opts ...Option) *Dialer {
	cfg, err := newConfig(opts)
	d := newDialer(cfg, &clientRuntime{}) // made on its own: it never proxies
	d.err = err
	return d
}

// newDialer returns the Dialer of a client configured by cfg. It proxies by
// rt's rule unless the options say the route is not its to choose
// (WithNoProxy, WithDialFunc).
func newDialer(cfg config, rt *clientRuntime) *Dialer {
	d := &Dialer{cfg: cfg, horizon: newIdleHorizon(cfg.maxIdle, cfg.keepAliveIdle, cfg.metrics)}
	d.router.DialFunc = cfg.dialFunc
	d.reported = IdleHorizonEvent{Horizon: d.horizon.retireAge(), KeepAlive: d.horizon.keepAliveIdle()} // what hooks start from
	if !cfg.noProxy && cfg.dialFunc == nil {
		d.router.Proxy = rt.proxy
	}
	d.checkAfter = int64(cfg.probeAfterIdle)
	if v := cfg.verifyAfterIdle; v > 0 && int64(v) < d.checkAfter {
		d.checkAfter = int64(v)
	}
	if cfg.keepAliveIdle > 0 {
		d.router.Net.KeepAliveConfig = net.KeepAliveConfig{
			Enable:   true,
			Idle:     cfg.keepAliveIdle,
			Interval: cfg.keepAliveInterval,
			Count:    cfg.keepAliveCount,
		}
	} else {
		d.router.Net.KeepAlive = -1
	}
	if cfg.userTimeout > 0 {
		d.router.Net.Control = func(network, _ string, rc syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil
			}
			return setUserTimeout(rc, cfg.userTimeout)
		}
	}
	return d
}

// DialContext dials addr in any form grpc-go hands a custom dialer:
// "host:port" (IPv4, [IPv6] or a name), "unix:relative/path",
// "unix:///absolute/path", and abstract sockets "unix:@name" or
// "unix-abstract:name"; or has the dial function of WithDialFunc dial it.
// Use it as grpc.WithContextDialer(d.DialContext).
func (d *Dialer) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	if d.err != nil {
		return nil, d.err
	}
	r, err := d.router.Route(ctx, addr)
	if err != nil {
		return nil, d.dialFailed(addr, nil, err)
	}
	if d.isClosed() {
		return nil, ErrDialerClosed
	}
	nc, err := d.router.Dial(ctx, r)
	d.cfg.metrics.dialed(err)
	if err != nil {
		return nil, d.dialFailed(addr, r.Proxy, err)
	}
	c := newConn(d, nc)
	if c.prober.rc == nil {
		d.cfg.metrics.unprobedConn() // a dial function's conn without its socket
	}
	if !d.register(c) {
		c.Close()
		return nil, ErrDialerClosed
	}
	if k := d.horizon.keepAliveIdle(); k != d.cfg.keepAliveIdle {
		c.path.setKeepAliveIdle(k)
	}
	return c, nil
}

// dialFailed tells the hooks that a dial of addr, through proxy when it is
// not nil, failed with err, and returns err.
func (d *Dialer) dialFailed(addr string, proxy *url.URL, err error) error {
	if h := d.cfg.hooks.OnDialError; h != nil {
		e := DialErrorEvent{Addr: addr, Err: err}
		if proxy != nil {
			e.Proxy = proxy.Host // never its User
		}
		h(e)
	}
	return err
}

// reportHorizon tells the hooks when the idle horizon or the keepalive in
// force changed since it last told them. It reads the horizon's published
// values, after the horizon's lock is released.
func (d *Dialer) reportHorizon() {
	h := d.cfg.hooks.OnIdleHorizon
	if h == nil {
		return
	}
	e := IdleHorizonEvent{Horizon: d.horizon.retireAge(), KeepAlive: d.horizon.keepAliveIdle()}
	d.hookMu.Lock()
	changed := e != d.reported
	d.reported = e
	d.hookMu.Unlock()
	if changed {
		h(e)
	}
}

// applyKeepAlive sets the keepalive the horizon asks for on every live conn.
func (d *Dialer) applyKeepAlive() {
	k := d.horizon.keepAliveIdle()
	if live := d.live.Load(); live != nil && k > 0 {
		for _, c := range *live {
			c.path.setKeepAliveIdle(k)
		}
	}
}

func (d *Dialer) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// register adds c to the live conns; it fails once the Dialer is closed.
func (d *Dialer) register(c *conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	var next []*conn
	if live := d.live.Load(); live != nil {
		next = append(next, *live...)
	}
	next = append(next, c)
	d.live.Store(&next)
	d.nextCheck.Store(0)
	if d.cfg.sweepInterval > 0 && d.sweepStop == nil {
		d.sweepStop = make(chan struct{})
		d.sweeps.Add(1)
		go d.sweep(d.sweepStop)
	}
	return true
}

// release drops c from the live conns. The sweep stops with the last conn: a
// Dialer with no conns runs nothing.
func (d *Dialer) release(c *conn) {
	d.cfg.metrics.connClosed()
	d.mu.Lock()
	defer d.mu.Unlock()
	if live := d.live.Load(); live != nil {
		next := make([]*conn, 0, len(*live))
		for _, lc := range *live {
			if lc != c {
				next = append(next, lc)
			}
		}
		d.live.Store(&next)
		d.nextCheck.Store(0)
		if len(next) == 0 && d.sweepStop != nil {
			close(d.sweepStop)
			d.sweepStop = nil
		}
	}
}

// Close stops the sweep, refuses new dials and closes the conns still open.
// grpc then sees its transports fail; close the grpc.ClientConn first.
func (d *Dialer) Close() error {
	d.mu.Lock()
	d.closed = true
	var open []*conn
	if live := d.live.Load(); live != nil {
		open = *live
	}
	d.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
	d.sweeps.Wait()
	return nil
}

func (d *Dialer) sweep(stop <-chan struct{}) {
	defer d.sweeps.Done()
	t := time.NewTicker(d.cfg.sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			d.nextCheck.Store(0)
			d.scan(nanotime(), nil, 0)
		}
	}
}

// beforePick runs before an attempt picks a transport; self is what the
// attempt itself adds to d.calls and d.streams. It retires the conns idle
// past the idle horizon and probes those idle at least the probe-after-idle
// time. A conn retired or found dead is closed, and the attempt waits (at
// most releaseWait) until grpc has released it, so that it picks a fresh
// transport instead of the dying one. Until the earliest time a conn can be
// due (nextCheck) it costs a clock read and an atomic load, whatever the
// number of conns.
func (d *Dialer) beforePick(ctx context.Context, self int64) {
	now := nanotime()
	if now < d.nextCheck.Load() {
		return
	}
	d.scan(now, ctx, self)
}

// busyRescan is how soon a scan that could not retire a conn because an RPC
// was in flight looks again.
const busyRescan = int64(time.Millisecond)

// scan checks every live conn at now and sets nextCheck. With a ctx it waits
// for the conns it closed to be released.
//
// A conn is retired only when the Dialer carries no RPC but the attempt
// running the scan (self), which has not picked yet: grpc reports which conn
// an attempt used only when it ends, so an RPC in flight on any conn holds
// back the retirement of all. With one conn (pick_first, grpc's default) that
// is exact; with several it errs toward keeping conns, which the probe and
// the path check still guard.
//
// nextCheck never ends up later than a conn's due time: for the conns scanned
// it is their earliest due time, and it is at most now plus the shortest due
// age, which a conn registered after now cannot beat. The horizon resets it
// when it shrinks.
func (d *Dialer) scan(now int64, ctx context.Context, self int64) {
	if d.horizon.refresh(now) {
		d.applyKeepAlive()
	}
	d.reportHorizon()
	live := d.live.Load()
	if live == nil {
		return
	}
	retireAge := int64(d.horizon.retireAge())
	fixed := d.cfg.maxIdle > 0
	idle := retireAge > 0 && d.countUnary.Load() && d.countStream.Load() &&
		d.calls.Load()+d.streams.Load() <= self
	probeAge := int64(d.cfg.probeAfterIdle)
	next := now + probeAge
	if retireAge > 0 {
		next = min(next, now+retireAge)
	}
	var timer *time.Timer
	for _, c := range *live {
		state := c.state.Load()
		if state == stateReleased {
			continue
		}
		if state == stateOpen {
			probeAt := max(c.lastIO.Load(), c.probedAt.Load()) + probeAge
			retireAt := c.lastActive.Load() + retireAge
			due := retireAge > 0 && now >= retireAt
			// gone: this scan retired c, or probed it and it is no longer
			// open (dead, or closed meanwhile).
			gone := false
			if due && idle {
				gone = c.retire(fixed)
			}
			if !gone && now >= probeAt {
				err := c.probe()
				gone = err != nil || c.state.Load() != stateOpen
			}
			if !gone {
				if c.state.Load() == stateOpen {
					next = min(next, probeAt)
					switch {
					case due:
						next = min(next, now+busyRescan) // held back: look again soon
					case retireAge > 0:
						next = min(next, retireAt)
					}
				}
				continue
			}
		}
		if ctx == nil {
			continue
		}
		// Closed and not yet released: the subchannel may still be READY.
		if timer == nil {
			timer = time.NewTimer(releaseWait)
			defer timer.Stop()
		}
		select {
		case <-c.released:
		case <-timer.C:
			ctx = nil // waited long enough: finish the scan without waiting
		case <-ctx.Done():
			ctx = nil
		}
	}
	d.nextCheck.Store(next)
}

// UnaryClientInterceptor returns the check before the pick for unary RPCs:
// install it innermost (after retry and hedging) so that every attempt, not
// only the call, is checked. It also counts the attempts in flight, which is
// how the Dialer knows that a conn it retires carries no call; it learns that
// a conn finished its handshake from the grpc.Peer of an attempt that ended
// on it, which the retry and hedging interceptors pass. The retry and hedging
// interceptors need it for nothing else: they learn whether an attempt left
// the client from the conn itself (see handoff.go).
func (d *Dialer) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	d.countUnary.Store(true)
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		d.calls.Add(1)
		d.beforePick(ctx, 1)
		err := invoker(ctx, method, req, reply, cc, opts...)
		d.calls.Add(-1)
		markUsed(opts)
		return err
	}
}

// markUsed marks the conn an attempt ended on as used, from the attempt's
// grpc.Peer: the peer of the grpcguard attempt riding in opts once grpc has
// finished with it (read earlier, grpc may still be writing it), else the
// last grpc.Peer in opts (an interceptor of the user's passed it).
func markUsed(opts []grpc.CallOption) {
	var pr *peer.Peer
	for i := len(opts) - 1; i >= 0; i-- {
		if a, ok := opts[i].(*attempt); ok {
			if !a.finished.Load() {
				return
			}
			pr = &a.peer
			break
		}
		if po, ok := opts[i].(grpc.PeerCallOption); ok && pr == nil {
			pr = po.PeerAddr // the user's, unless an attempt follows
		}
	}
	if pr == nil {
		return
	}
	if ca, ok := pr.LocalAddr.(*connAddr); ok && !ca.c.used.Load() {
		ca.c.used.Store(true)
	}
}

// StreamClientInterceptor returns the check before the pick for streams. It
// counts the streams open until they end (an error or the end of the
// responses from RecvMsg, or the stream's context done), and marks the conn
// a stream ended on as used.
func (d *Dialer) StreamClientInterceptor() grpc.StreamClientInterceptor {
	d.countStream.Store(true)
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		d.streams.Add(1)
		d.beforePick(ctx, 1)
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			d.streams.Add(-1)
			return nil, err
		}
		counted := &countedStream{ClientStream: s, d: d, serverStreams: desc.ServerStreams}
		counted.stop = context.AfterFunc(ctx, counted.end)
		return counted, nil
	}
}

// countedStream takes its stream off the Dialer's count when it ends.
type countedStream struct {
	grpc.ClientStream
	d             *Dialer
	serverStreams bool
	ended         atomic.Bool
	stop          func() bool
}

// end takes the stream off the count, once: from the AfterFunc when the
// context ends, or from finish.
func (s *countedStream) end() {
	if s.ended.CompareAndSwap(false, true) {
		s.d.streams.Add(-1)
	}
}

// finish ends the stream from the caller's goroutine, which also releases
// the AfterFunc (stop is set before the caller has the stream), and marks
// the conn it ran on as used. (Its Context, which names the conn, is read
// only now: reading it earlier would commit the stream and end grpc-go's
// transparent retry of it.)
func (s *countedStream) finish() {
	s.stop()
	s.end()
	if pr, ok := peer.FromContext(s.ClientStream.Context()); ok {
		if ca, ok := pr.LocalAddr.(*connAddr); ok && !ca.c.used.Load() {
			ca.c.used.Store(true)
		}
	}
}

// RecvMsg ends the stream on an error (io.EOF included) and, for a stream
// with one response, on that response: grpc has read its status by then.
func (s *countedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil || !s.serverStreams {
		s.finish()
	}
	return err
}

// SendMsg ends the stream on an error other than io.EOF (which says the
// stream ended on the server and leaves its status to RecvMsg).
func (s *countedStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err != nil && !errors.Is(err, io.EOF) {
		s.finish()
	}
	return err
}

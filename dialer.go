package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
)

// ErrDialerClosed is returned by DialContext after Dialer.Close.
var ErrDialerClosed = errors.New("grpcguard: dialer closed")

// releaseWait bounds how long an RPC waits, after a stale conn was closed,
// for grpc to release it and take its subchannel out of READY. grpc does so
// within 0.3-1.6 ms of the socket closing on an idle machine.
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
	nd  net.Dialer

	// checkAfter is the idle time after which a conn's Write checks it
	// first: the shorter of the probe-after-idle and verify-after-idle times.
	checkAfter int64
	horizon    *idleHorizon

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
}

// NewDialer returns a Dialer configured by opts. Invalid options do not
// panic: every DialContext then fails with an error matching
// ErrInvalidOption that names them (DialOptions reports them at once).
func NewDialer(opts ...Option) *Dialer {
	cfg, err := newConfig(opts)
	d := &Dialer{cfg: cfg, err: err, horizon: newIdleHorizon(cfg.maxIdle, cfg.metrics)}
	d.checkAfter = int64(cfg.probeAfterIdle)
	if v := cfg.verifyAfterIdle; v > 0 && int64(v) < d.checkAfter {
		d.checkAfter = int64(v)
	}
	if cfg.keepAliveIdle > 0 {
		d.nd.KeepAliveConfig = net.KeepAliveConfig{
			Enable:   true,
			Idle:     cfg.keepAliveIdle,
			Interval: cfg.keepAliveInterval,
			Count:    cfg.keepAliveCount,
		}
	} else {
		d.nd.KeepAlive = -1
	}
	if cfg.userTimeout > 0 {
		d.nd.Control = func(network, _ string, rc syscall.RawConn) error {
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
	r, err := d.route(ctx, addr) // see dialroute.go
	if err != nil {
		return nil, err
	}
	if d.isClosed() {
		return nil, ErrDialerClosed
	}
	nc, err := d.dialRaw(ctx, r)
	d.cfg.metrics.dialed(err)
	if err != nil {
		return nil, err
	}
	c := newConn(d, nc)
	if c.prober.rc == nil {
		d.cfg.metrics.unprobedConn() // a dial function's conn without its socket
	}
	if !d.register(c) {
		c.Close()
		return nil, ErrDialerClosed
	}
	return c, nil
}

// parseDialAddr turns an address from grpc into a network and an address
// for net.Dial.
func parseDialAddr(addr string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		address = addr[len("unix://"):]
		if !strings.HasPrefix(address, "/") {
			return "", "", fmt.Errorf("grpcguard: dial %q: unix:// needs an absolute path", addr)
		}
		return "unix", address, nil
	case strings.HasPrefix(addr, "unix-abstract:"):
		address = addr[len("unix-abstract:"):]
		if address == "" {
			return "", "", fmt.Errorf("grpcguard: dial %q: empty abstract socket name", addr)
		}
		return "unix", "@" + address, nil
	case strings.HasPrefix(addr, "unix:"):
		address = addr[len("unix:"):]
		if address == "" || address == "@" {
			return "", "", fmt.Errorf("grpcguard: dial %q: empty unix socket path", addr)
		}
		return "unix", address, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("grpcguard: dial %q: %w", addr, err)
	}
	if port == "" {
		return "", "", fmt.Errorf("grpcguard: dial %q: missing port", addr)
	}
	_ = host // an empty host dials the local system, as net.Dial does
	return "tcp", addr, nil
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
	if p := d.live.Load(); p != nil {
		next = append(next, *p...)
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
	if p := d.live.Load(); p != nil {
		next := make([]*conn, 0, len(*p))
		for _, lc := range *p {
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
	if p := d.live.Load(); p != nil {
		open = *p
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
			d.scan(nanotime(), nil)
		}
	}
}

// beforePick runs before an attempt picks a transport. It retires the conns
// idle past the idle horizon and probes those idle at least the
// probe-after-idle time. A conn retired or found dead is closed, and the
// attempt waits (at most releaseWait) until grpc has released it, so that it
// picks a fresh transport instead of the dying one. Until the earliest time a
// conn can be due (nextCheck) it costs a clock read and an atomic load,
// whatever the number of conns.
func (d *Dialer) beforePick(ctx context.Context) {
	now := nanotime()
	if now < d.nextCheck.Load() {
		return
	}
	d.scan(now, ctx)
}

// scan checks every live conn at now and sets nextCheck. With a ctx it waits
// for the conns it closed to be released.
//
// nextCheck never ends up later than a conn's due time: for the conns scanned
// it is their earliest due time, and it is at most now plus the shortest due
// age, which a conn registered after now cannot beat. The horizon resets it
// when it shrinks.
func (d *Dialer) scan(now int64, ctx context.Context) {
	p := d.live.Load()
	if p == nil {
		return
	}
	ra, rf := d.horizon.retireAge(now)
	retireAge, retireAwaiting := int64(ra), int64(rf)
	probeAge := int64(d.cfg.probeAfterIdle)
	next := now + probeAge
	if retireAge > 0 {
		next = min(next, now+retireAge)
	}
	var timer *time.Timer
	for _, c := range *p {
		switch c.state.Load() {
		case stateReleased:
			continue
		case stateOpen:
			io := c.lastIO.Load()
			probeAt := max(io, c.probedAt.Load()) + probeAge
			retireAt := io + retireAge
			if c.awaiting.Load() {
				retireAt = io + retireAwaiting
			}
			switch {
			case retireAge > 0 && now >= retireAt && c.retire():
			case now >= probeAt && (c.probe() != nil || c.state.Load() != stateOpen):
			default:
				if c.state.Load() == stateOpen {
					next = min(next, max(io, c.probedAt.Load())+probeAge)
					if retireAge > 0 {
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
// only the call, is checked. The retry and hedging interceptors need it for
// nothing else: they learn whether an attempt left the client from the conn
// itself (see handoff.go).
func (d *Dialer) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		d.beforePick(ctx)
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// StreamClientInterceptor returns the check before the pick for streams.
func (d *Dialer) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		d.beforePick(ctx)
		return streamer(ctx, desc, cc, method, opts...)
	}
}

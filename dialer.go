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

// recentConns is how many released conns a Dialer remembers, so that a
// failed attempt can still be matched to its conn after grpc let go of it.
const recentConns = 64

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

	// live is the snapshot of open conns the per-RPC path reads without a
	// lock; it is replaced, under mu, whenever a conn comes or goes.
	live atomic.Pointer[[]*conn]

	mu         sync.Mutex
	recent     [recentConns]*conn // released conns, a ring
	recentNext int
	closed     bool
	sweepStop  chan struct{} // non-nil while a sweep goroutine runs
	sweeps     sync.WaitGroup
}

// NewDialer returns a Dialer configured by opts. Invalid options do not
// panic: every DialContext then fails with an error matching
// ErrInvalidOption that names them (DialOptions reports them at once).
func NewDialer(opts ...Option) *Dialer {
	cfg, err := newConfig(opts)
	d := &Dialer{cfg: cfg, err: err}
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
// "unix-abstract:name". Use it as grpc.WithContextDialer(d.DialContext).
func (d *Dialer) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	if d.err != nil {
		return nil, d.err
	}
	network, address, err := parseDialAddr(addr)
	if err != nil {
		return nil, err
	}
	if d.isClosed() {
		return nil, ErrDialerClosed
	}
	nc, err := d.nd.DialContext(ctx, network, address)
	d.cfg.metrics.dialed(err)
	if err != nil {
		return nil, err
	}
	c := newConn(d, nc)
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
	if d.cfg.sweepInterval > 0 && d.sweepStop == nil {
		d.sweepStop = make(chan struct{})
		d.sweeps.Add(1)
		go d.sweep(d.sweepStop)
	}
	return true
}

// release drops c from the live conns and remembers it among the recent ones.
// The sweep stops with the last conn: a Dialer with no conns runs nothing.
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
		if len(next) == 0 && d.sweepStop != nil {
			close(d.sweepStop)
			d.sweepStop = nil
		}
	}
	d.recent[d.recentNext] = c
	d.recentNext = (d.recentNext + 1) % recentConns
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
			now := nanotime()
			for _, c := range *d.live.Load() {
				if c.state.Load() == stateOpen && c.idle(now) {
					c.probe()
				}
			}
		}
	}
}

// probeBeforePick probes the conns idle at least the probe-after-idle time. A
// stale one is closed, and the caller waits (at most releaseWait) until grpc
// has released it, so that the RPC picks a fresh transport instead of the
// dying one. With nothing idle it costs an atomic load per conn and a clock
// read.
func (d *Dialer) probeBeforePick(ctx context.Context) {
	p := d.live.Load()
	if p == nil {
		return
	}
	var timer *time.Timer
	now := nanotime()
	for _, c := range *p {
		switch c.state.Load() {
		case stateReleased:
			continue
		case stateOpen:
			if !c.idle(now) || c.probe() == nil || c.state.Load() == stateReleased {
				continue
			}
		}
		// Stale and not yet released: the subchannel may still be READY.
		if timer == nil {
			timer = time.NewTimer(releaseWait)
			defer timer.Stop()
		}
		select {
		case <-c.released:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// UnaryClientInterceptor returns the probe before the pick for unary RPCs:
// install it innermost (after retry and hedging) so every attempt is probed.
// It also lets the retry and hedging interceptors learn whether a failed
// attempt ever left the client.
func (d *Dialer) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		d.probeBeforePick(ctx)
		if a := attemptFrom(ctx); a != nil {
			opts = a.begin(d, opts)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// StreamClientInterceptor returns the probe before the pick for streams.
func (d *Dialer) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		d.probeBeforePick(ctx)
		if a := attemptFrom(ctx); a != nil {
			opts = a.begin(d, opts)
		}
		return streamer(ctx, desc, cc, method, opts...)
	}
}

// sentSince answers, for the conn with local address local, whether any write
// reached its socket at or after start, and whether the conn was found broken
// by its peer. found is false when no conn of this Dialer has that address.
// Unix client sockets share one unnamed local address: every candidate must
// then be quiet for the answer to be "nothing sent".
func (d *Dialer) sentSince(local string, start int64) (found, sent, died bool) {
	check := func(c *conn) {
		if c == nil || c.local != local {
			return
		}
		found = true
		if c.lastSent.Load() >= start {
			sent = true
		}
		if c.reason.Load() >= 0 {
			died = true
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.live.Load(); p != nil {
		for _, c := range *p {
			check(c)
		}
	}
	for _, c := range d.recent {
		check(c)
	}
	return found, sent, died
}

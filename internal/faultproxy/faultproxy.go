// Package faultproxy is a loopback TCP proxy that injects the connection
// faults grpcguard defends against: an idle connection closed with FIN or
// RST, half-closed, reset when the client next sends (what a load balancer or
// NAT whose state expired does), blackholed, delayed, closed on command, or
// reset after the server ran a call and before its reply reaches the client.
//
// It listens on 127.0.0.1 only, forwards to one target, and stops by itself
// after Config.Lifetime, so a test that forgets it cannot leak it for long.
package faultproxy

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is what the proxy does to a connection.
type Mode int32

const (
	// Pass forwards both ways, untouched.
	Pass Mode = iota
	// FINAfterIdle closes the client's connection (FIN) once it has been idle
	// for Config.Idle.
	FINAfterIdle
	// RSTAfterIdle resets the client's connection once it has been idle for
	// Config.Idle.
	RSTAfterIdle
	// HalfCloseAfterIdle shuts down the proxy's sending side toward the
	// client (shutdown(SHUT_WR), a FIN) once idle for Config.Idle; what the
	// client sends afterwards is dropped.
	HalfCloseAfterIdle
	// ResetFirstBytesAfterIdle resets the client's connection, without
	// forwarding them, when the client sends bytes after Config.Idle of
	// silence: the client's write succeeds, the server never sees it.
	ResetFirstBytesAfterIdle
	// Blackhole stops forwarding in both directions and keeps the sockets
	// open: nothing is closed, nothing arrives.
	Blackhole
	// LostReply forwards the client's first request to the server and then,
	// when the server starts its reply (HTTP/2 HEADERS or DATA on a stream),
	// resets the client's connection without forwarding it, and closes the
	// server's: the server ran the call, the client never hears of it (an L7
	// proxy or a dying connection losing the answer). It reads the HTTP/2
	// frame headers, so it needs plaintext (h2c) connections.
	LostReply
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case FINAfterIdle:
		return "fin-after-idle"
	case RSTAfterIdle:
		return "rst-after-idle"
	case HalfCloseAfterIdle:
		return "half-close-after-idle"
	case ResetFirstBytesAfterIdle:
		return "reset-first-bytes-after-idle"
	case Blackhole:
		return "blackhole"
	case LostReply:
		return "lost-reply"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses the String form of a Mode.
func ParseMode(s string) (Mode, error) {
	for m := Pass; m <= LostReply; m++ {
		if m.String() == strings.ToLower(s) {
			return m, nil
		}
	}
	return 0, fmt.Errorf("faultproxy: unknown mode %q", s)
}

// Config configures a Proxy.
type Config struct {
	// Mode applies to every connection unless Choose is set.
	Mode Mode
	// Choose, if set, picks the mode of each new connection (n counts from 0).
	Choose func(n int) Mode
	// Idle is the quiet time after which the *AfterIdle modes act.
	Idle time.Duration
	// Delay holds every forwarded chunk this long.
	Delay time.Duration
	// Lifetime closes the proxy by itself after this long. Default 2 minutes.
	Lifetime time.Duration
	// ClientRcvBuf, if set, fixes SO_RCVBUF of accepted client connections,
	// which turns off the kernel's receive buffer autotuning: a stalled
	// proxy then absorbs at most about that much before the client blocks.
	ClientRcvBuf int
}

// Stats counts what the proxy did.
type Stats struct {
	Accepted   int64 // client connections accepted
	FINs       int64 // client connections closed with FIN by a fault
	RSTs       int64 // client connections reset by a fault (idle or first bytes)
	HalfCloses int64 // client connections half-closed by a fault
	// LostReplies counts client connections reset by LostReply (also counted
	// in RSTs).
	LostReplies int64
}

// Closes is every client connection a fault closed, reset or half-closed.
func (s Stats) Closes() int64 { return s.FINs + s.RSTs + s.HalfCloses }

// Proxy is a running fault proxy.
type Proxy struct {
	cfg    Config
	target string
	ln     net.Listener
	mode   atomic.Int32
	black  atomic.Bool
	stall  atomic.Pointer[chan struct{}] // non-nil while reading from clients is stalled

	accepted, fins, rsts, halfCloses, lostReplies atomic.Int64

	mu     sync.Mutex
	conns  map[*pconn]struct{}
	n      int
	closed bool
	wg     sync.WaitGroup
	life   *time.Timer
}

// Start listens on 127.0.0.1 and forwards to target, which must be a
// loopback address.
func Start(target string, cfg Config) (*Proxy, error) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("faultproxy: target %q is not a loopback address", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = 2 * time.Minute
	}
	p := &Proxy{cfg: cfg, target: target, ln: ln, conns: make(map[*pconn]struct{})}
	p.mode.Store(int32(cfg.Mode))
	p.life = time.AfterFunc(cfg.Lifetime, func() { p.Close() })
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetMode changes the mode of new connections and of open ones whose mode was
// not chosen by Config.Choose.
func (p *Proxy) SetMode(m Mode) { p.mode.Store(int32(m)) }

// SetBlackhole stops (true) or resumes (false) forwarding on every
// connection, old and new.
func (p *Proxy) SetBlackhole(on bool) { p.black.Store(on) }

// SetStall stops (true) or resumes (false) reading from every client: the
// client's writes fill the socket buffers, then block, as against a server
// that does not read (set Config.ClientRcvBuf to make that quick and
// certain). What was read before is held, not lost.
func (p *Proxy) SetStall(on bool) {
	if on {
		gate := make(chan struct{})
		p.stall.CompareAndSwap(nil, &gate)
	} else if g := p.stall.Swap(nil); g != nil {
		close(*g)
	}
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	return Stats{Accepted: p.accepted.Load(), FINs: p.fins.Load(), RSTs: p.rsts.Load(), HalfCloses: p.halfCloses.Load(),
		LostReplies: p.lostReplies.Load()}
}

// Open returns the number of client connections open now.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// CloseAll closes every open client connection now, with RST if rst is set
// and FIN otherwise, and returns how many it closed. The server side of each
// is closed too.
func (p *Proxy) CloseAll(rst bool) int {
	p.mu.Lock()
	conns := make([]*pconn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	n := 0
	for _, c := range conns {
		if c.fault(rst) {
			n++
		}
	}
	return n
}

// Close stops the proxy and closes every connection. It waits for its
// goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	conns := make([]*pconn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	p.life.Stop()
	p.SetStall(false)
	err := p.ln.Close()
	for _, c := range conns {
		c.shut()
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			return
		}
		sc, err := net.Dial("tcp", p.target)
		if err != nil {
			cc.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			cc.Close()
			sc.Close()
			return
		}
		mode := Mode(-1) // follow p.mode
		if p.cfg.Choose != nil {
			mode = p.cfg.Choose(p.n)
		}
		p.n++
		c := &pconn{p: p, client: cc.(*net.TCPConn), server: sc.(*net.TCPConn), fixedMode: mode}
		c.clientScan.preface = len(h2Preface)
		if p.cfg.ClientRcvBuf > 0 {
			c.client.SetReadBuffer(p.cfg.ClientRcvBuf)
		}

		c.touch()
		p.conns[c] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		p.accepted.Add(1)
		if p.cfg.Idle > 0 {
			// Armed far out, then reset: the callback must see idleTimer set.
			c.idleTimer = time.AfterFunc(time.Hour, c.checkIdle)
			c.idleTimer.Reset(p.cfg.Idle)
		}
		go c.pipe(c.client, c.server, true)
		go c.pipe(c.server, c.client, false)
	}
}

// pconn is one proxied connection.
type pconn struct {
	p              *Proxy
	client, server *net.TCPConn
	fixedMode      Mode
	last           atomic.Int64 // unix nanos of the last forwarded byte
	faulted        atomic.Bool  // a fault closed it: stop forwarding
	halfClosed     atomic.Bool
	idleTimer      *time.Timer
	pipes          atomic.Int32 // pipes that have ended
	// LostReply: each pipe follows the frames of its own direction.
	requested  atomic.Bool // a request's HEADERS went to the server
	clientScan h2scan
	serverScan h2scan
}

func (c *pconn) mode() Mode {
	if c.fixedMode >= 0 {
		return c.fixedMode
	}
	return Mode(c.p.mode.Load())
}

func (c *pconn) touch() { c.last.Store(time.Now().UnixNano()) }

func (c *pconn) idleFor() time.Duration { return time.Duration(time.Now().UnixNano() - c.last.Load()) }

// checkIdle runs when the idle timer fires: it acts if the conn really was
// idle that long, and rearms otherwise.
func (c *pconn) checkIdle() {
	if c.faulted.Load() {
		return
	}
	idle := c.idleFor()
	if idle < c.p.cfg.Idle {
		c.idleTimer.Reset(c.p.cfg.Idle - idle)
		return
	}
	switch c.mode() {
	case FINAfterIdle:
		c.fault(false)
	case RSTAfterIdle:
		c.fault(true)
	case HalfCloseAfterIdle:
		if c.faulted.CompareAndSwap(false, true) {
			c.halfClosed.Store(true)
			c.p.halfCloses.Add(1) // before the client can see it, as in fault
			c.client.CloseWrite()
			c.server.Close()
		}
	default:
		c.idleTimer.Reset(c.p.cfg.Idle)
	}
}

// fault closes the client side with RST or FIN, and the server side, and
// reports whether this call did it; it counts the fault, and in each of also.
func (c *pconn) fault(rst bool, also ...*atomic.Int64) bool {
	if !c.faulted.CompareAndSwap(false, true) {
		return false
	}
	// Counted before the sockets close: a client that sees the fault may
	// read the counters at once.
	for _, n := range also {
		n.Add(1)
	}
	if rst {
		c.client.SetLinger(0)
		c.p.rsts.Add(1)
	} else {
		c.p.fins.Add(1)
	}
	c.client.Close()
	c.server.Close()
	return true
}

// shut closes both sides without counting a fault.
func (c *pconn) shut() {
	c.faulted.Store(true)
	c.client.Close()
	c.server.Close()
}

// end runs as each pipe ends. A half-closed conn keeps draining the client
// until the client closes; otherwise either side ending closes both.
func (c *pconn) end(fromClient bool) {
	if fromClient || !c.halfClosed.Load() {
		c.client.Close()
		c.server.Close()
	}
	if c.pipes.Add(1) < 2 {
		return
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	c.p.mu.Lock()
	delete(c.p.conns, c)
	c.p.mu.Unlock()
}

// pipe forwards src to dst until either fails. fromClient marks the
// client-to-server direction, where ResetFirstBytesAfterIdle acts.
func (c *pconn) pipe(src, dst *net.TCPConn, fromClient bool) {
	defer c.p.wg.Done()
	defer c.end(fromClient)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if fromClient {
			if g := c.p.stall.Load(); g != nil {
				<-*g // hold what was read until the stall ends
			}
		}
		if n > 0 {
			if fromClient && c.mode() == ResetFirstBytesAfterIdle && c.idleFor() >= c.p.cfg.Idle && !c.faulted.Load() {
				c.fault(true)
				return
			}
			if c.mode() == LostReply && c.lostReply(buf[:n], fromClient) {
				return
			}
			if c.faulted.Load() {
				if fromClient {
					continue // half-closed: drop what the client still sends
				}
				return
			}
			if c.p.black.Load() || c.mode() == Blackhole {
				continue // swallowed: the kernel has ACKed it, nobody forwards it
			}
			c.touch()
			if d := c.p.cfg.Delay; d > 0 {
				time.Sleep(d)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Random returns a Choose function that picks uniformly from modes with a
// seeded source, for soak tests that mix faults.
func Random(seed uint64, modes ...Mode) func(int) Mode {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var mu sync.Mutex
	return func(int) Mode {
		mu.Lock()
		defer mu.Unlock()
		return modes[r.IntN(len(modes))]
	}
}

// lostReply follows the HTTP/2 frames of a LostReply connection and reports
// whether it reset the client: b, from the server, starts a reply to a
// request the client sent.
func (c *pconn) lostReply(b []byte, fromClient bool) bool {
	if fromClient {
		if c.clientScan.feed(b, frameHeaders) {
			c.requested.Store(true)
		}
		return false
	}
	reply := c.serverScan.feed(b, frameHeaders, frameData)
	if reply && c.requested.Load() && c.fault(true, &c.p.lostReplies) {
		return true
	}
	return false
}

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// HTTP/2 frame types (RFC 9113, section 6).
const (
	frameData    = 0x0
	frameHeaders = 0x1
)

// h2scan follows the frames of one direction of an HTTP/2 connection, across
// reads: it skips the client preface, then reads each 9-byte frame header
// and skips the payload.
type h2scan struct {
	preface int // bytes of the client preface still to skip
	hdr     [9]byte
	nhdr    int
	skip    int // payload bytes still to skip
}

// feed scans b and reports whether a frame of one of types on a stream (not
// the connection, stream 0) begins in it.
func (s *h2scan) feed(b []byte, types ...byte) bool {
	found := false
	for len(b) > 0 {
		switch {
		case s.preface > 0:
			n := min(s.preface, len(b))
			s.preface -= n
			b = b[n:]
		case s.skip > 0:
			n := min(s.skip, len(b))
			s.skip -= n
			b = b[n:]
		default:
			n := copy(s.hdr[s.nhdr:], b)
			s.nhdr += n
			b = b[n:]
			if s.nhdr < len(s.hdr) {
				continue
			}
			s.nhdr = 0
			s.skip = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
			stream := (uint32(s.hdr[5])<<24 | uint32(s.hdr[6])<<16 | uint32(s.hdr[7])<<8 | uint32(s.hdr[8])) & 0x7fffffff
			for _, t := range types {
				if s.hdr[3] == t && stream != 0 {
					found = true
				}
			}
		}
	}
	return found
}

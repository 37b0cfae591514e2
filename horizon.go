package grpcguard

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// What a Dialer learns from its connections' lives, and what it does with it.
// Each action is weighed by what a wrong guess costs.
//
// A conn that dies after idle tells two ages: its data idle (since its last
// traffic before the close began: the last write, or the last read that
// answered one or belonged to an open RPC; frames a peer sends unasked while
// closing, a GOAWAY, do not count) and its path idle (since the last packet it
// received, keepalive ACKs included, from TCP_INFO; the data idle where that
// cannot be read). Every death is counted in the idle-age histogram at its
// data idle. What it teaches depends on how it died:
//
//   - reset or silence (a RST, ETIMEDOUT, a path check answered by RST): a
//     middlebox forgot the flow. Keepalive prevents that, since NATs, load
//     balancers and conntrack refresh a flow on keepalive probes. One such
//     death shortens the TCP keepalive of the Dialer's conns, live ones
//     included, to half its path idle (whole seconds, at least 1s, at most
//     what WithKeepAlive set) for keepAliveMemory, and sets the dead edge (the
//     shortest path idle at which one died) which arms the path check below it.
//     A wrong guess costs one keepalive packet per idle conn per second or so.
//   - closed (a FIN): an endpoint or an L7 proxy timed the conn out;
//     keepalive cannot satisfy it.
//   - announced (a FIN right after unasked data, such as nginx's or HAProxy's
//     GOAWAY): grpc-go already moves new calls off such a conn; counted, not
//     learned.
//
// Retirement (closing an idle conn that carries nothing before a call picks
// it) costs a redial per idle period, so it needs consistent evidence: two
// learned deaths, reset or closed, whose data idles agree within a factor of
// two. The younger of the youngest such pair is the horizon; conns are retired
// at retireFraction of it. One death, such as a server restart killing a conn
// 40ms after its last call, retires nothing. Deaths within deathCoalesce of
// the previous one are one event (every conn of a restarted server dying at
// once) and teach nothing more. Deaths are remembered for horizonMemoryFactor
// times their age, at least horizonMemoryMin.
//
// The path check (see pathcheck.go) is the round trip a write after idle may
// wait for. It runs only where the answer is unknown: when the conn's path
// idle is at least WithVerifyAfterIdle and above the alive edge, the longest
// path idle at which this Dialer's path was seen alive (a path check
// answered, a write after idle answered, a keepalive ACK after our last
// traffic), remembered for aliveMemory. A reset death at or below the alive
// edge forgets it. A sparse caller on a healthy path thus pays one TCP_INFO
// read per call after its first few calls, not a round trip.
//
// WithMaxIdle sets the horizon by hand and turns the learning of retirement
// off; conns are then retired at exactly that idle age, as net/http's
// IdleConnTimeout does. Keepalive and the path check still learn.

const (
	// minIdleDeath is the youngest idle age a death must have to be
	// learned: well under any real middlebox idle timeout (seconds and up),
	// above the quiet gaps of a busy connection.
	minIdleDeath = 25 * time.Millisecond
	// horizonSamples is how many recent deaths retirement rests on.
	horizonSamples = 8
	// retireFraction: learned horizons retire conns at 80% of the estimate.
	retireFraction = 0.8
	// How long a death is remembered: the factor times its age, at least
	// the minimum.
	horizonMemoryFactor = 16
	horizonMemoryMin    = time.Minute
	// deathCoalesce: deaths this close together are one event.
	deathCoalesce = 20 * time.Millisecond
	// keepAliveMemory: how long a shortened keepalive is kept after the
	// death that asked for it. Once keepalive works, no death renews it.
	keepAliveMemory = time.Hour
	// aliveMemory: how long the alive edge is kept without a sample at or
	// above it.
	aliveMemory = 10 * time.Minute
	// aliveMargin: a path idle is known alive only this far below the edge.
	// None: both are read the same way (TCP_INFO, in jiffies), a caller that
	// calls every N seconds must find its own period known, and the path was
	// seen alive a little later than measured (the probe leaves a tick after
	// the read).
	aliveMargin = 0
)

// deathKind is what a death tells about the path.
type deathKind uint8

const (
	deathClosed    deathKind = iota // FIN: an endpoint or L7 proxy timed it out
	deathReset                      // RST or silence: a middlebox forgot the flow
	deathAnnounced                  // FIN right after unasked data (GOAWAY)
)

// idleDeath is one death as a conn reports it.
type idleDeath struct {
	idle time.Duration // data idle
	path time.Duration // path idle
	kind deathKind
	at   int64 // nanotime
}

func memoryOf(age time.Duration) int64 { return int64(max(horizonMemoryMin, horizonMemoryFactor*age)) }

// idleHorizon is one Dialer's learned evidence. observe is called once per
// dead conn and alive on answered idle writes; the per-scan and per-write
// reads are atomic loads while nothing expires.
type idleHorizon struct {
	fixed     time.Duration // WithMaxIdle; learnHorizon (< 0): learned; 0: off
	keepAlive time.Duration // WithKeepAlive's idle; 0: keepalive off, never shortened
	metrics   *Metrics

	mu        sync.Mutex
	deaths    [horizonSamples]idleDeath // learned deaths, for retirement; idle 0: empty
	next      int
	lastDeath int64
	deadEdge  time.Duration // shortest path idle of a reset death; 0: none
	deadUntil int64
	keepSet   time.Duration // shortened keepalive; 0: the configured one
	keepUntil int64
	alive     time.Duration // the alive edge
	aliveAt   int64

	retire    atomic.Int64 // idle ns after which a conn is retired; 0: never
	aliveEdge atomic.Int64 // path idle ns known alive; 0: none
	aliveSeen atomic.Int64 // aliveAt, for the lock-free look in sawAlive
	keep      atomic.Int64 // the keepalive idle in force, ns
	expires   atomic.Int64 // nanotime when something learned expires
}

func newIdleHorizon(fixed, keepAlive time.Duration, m *Metrics) *idleHorizon {
	h := &idleHorizon{fixed: fixed, keepAlive: keepAlive, metrics: m}
	h.expires.Store(math.MaxInt64)
	h.keep.Store(int64(keepAlive))
	m.keepAliveSet(keepAlive)
	if fixed > 0 {
		h.retire.Store(int64(fixed))
		m.horizonSet(fixed)
	}
	return h
}

// refresh forgets what expired by now; it reports whether the keepalive in
// force changed. Cheap when nothing expires.
func (h *idleHorizon) refresh(now int64) (keepChanged bool) {
	if now < h.expires.Load() {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.updateLocked(now)
}

// retireAge returns the idle age at which conns carrying nothing are
// retired, 0 for never (refresh first forgets what expired).
func (h *idleHorizon) retireAge() time.Duration { return time.Duration(h.retire.Load()) }

// keepAliveIdle is the TCP keepalive idle the Dialer's conns should use now.
func (h *idleHorizon) keepAliveIdle() time.Duration { return time.Duration(h.keep.Load()) }

// knownAlive reports whether a conn whose path has been idle path can write
// without a path check: the path was seen alive after a longer idle.
func (h *idleHorizon) knownAlive(path time.Duration) bool {
	return path+aliveMargin <= time.Duration(h.aliveEdge.Load())
}

// observe learns from a dead conn; it reports whether the keepalive in force
// changed.
func (h *idleHorizon) observe(d idleDeath) (keepChanged bool) {
	h.metrics.staleIdle(d.idle)
	if d.kind == deathAnnounced || max(d.idle, d.path) < minIdleDeath {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	coalesced := h.lastDeath != 0 && d.at-h.lastDeath < int64(deathCoalesce)
	h.lastDeath = d.at
	if coalesced {
		return false
	}
	if d.kind == deathReset {
		if h.deadEdge == 0 || d.path < h.deadEdge {
			h.deadEdge = d.path
		}
		h.deadUntil = max(h.deadUntil, d.at+memoryOf(d.path))
		if h.alive+aliveMargin > d.path {
			h.alive, h.aliveAt = 0, 0 // the edge was wrong: verify again
		}
		if h.keepAlive > 0 {
			k := min(max(time.Second, (d.path/2).Truncate(time.Second)), h.keepAlive)
			if h.keepSet == 0 || k < h.keepSet {
				h.keepSet = k
			}
			h.keepUntil = d.at + int64(keepAliveMemory)
		}
	}
	if h.fixed < 0 && d.idle >= minIdleDeath {
		h.deaths[h.next] = idleDeath{idle: d.idle, at: d.at}
		h.next = (h.next + 1) % horizonSamples
	}
	return h.updateLocked(d.at)
}

// sawAlive learns that the path answered after path of idle, at now.
func (h *idleHorizon) sawAlive(path time.Duration, now int64) {
	if path <= 0 || (path <= time.Duration(h.aliveEdge.Load()) && now-h.aliveSeen.Load() < int64(aliveMemory)/2) {
		return // nothing new, and the edge was confirmed recently
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.deadEdge != 0 && path+aliveMargin > h.deadEdge {
		return // contradicted by a death at that idle: leave it to the check
	}
	if path >= h.alive || now-h.aliveAt >= int64(aliveMemory)/2 {
		h.alive = max(path, h.alive)
		h.aliveAt = now
	}
	h.updateLocked(now)
}

// updateLocked forgets what expired at now and publishes the rest; it
// reports whether the keepalive in force changed.
func (h *idleHorizon) updateLocked(now int64) bool {
	expires := int64(math.MaxInt64)
	var ages [horizonSamples]time.Duration
	n := 0
	for i, d := range h.deaths {
		switch {
		case d.idle == 0:
		case d.at+memoryOf(d.idle) <= now:
			h.deaths[i] = idleDeath{}
		default:
			ages[n] = d.idle
			n++
			expires = min(expires, d.at+memoryOf(d.idle))
		}
	}
	if h.deadEdge != 0 {
		if h.deadUntil <= now {
			h.deadEdge = 0
		} else {
			expires = min(expires, h.deadUntil)
		}
	}
	if h.keepSet != 0 {
		if h.keepUntil <= now {
			h.keepSet = 0
		} else {
			expires = min(expires, h.keepUntil)
		}
	}
	if h.alive != 0 {
		if h.aliveAt+int64(aliveMemory) <= now {
			h.alive, h.aliveAt = 0, 0
		} else {
			expires = min(expires, h.aliveAt+int64(aliveMemory))
		}
	}
	h.expires.Store(expires)
	h.aliveEdge.Store(int64(h.alive))
	h.aliveSeen.Store(h.aliveAt)

	keep := h.keepAlive
	if h.keepSet != 0 {
		keep = h.keepSet
	}
	changed := int64(keep) != h.keep.Swap(int64(keep))
	if changed {
		h.metrics.keepAliveSet(keep)
	}
	if h.fixed >= 0 {
		return changed
	}
	est := estimateHorizon(ages[:n])
	h.retire.Store(int64(float64(est) * retireFraction))
	h.metrics.horizonSet(est)
	return changed
}

// estimateHorizon returns the youngest data idle that another death
// corroborates (the next one is at most twice as old), or 0 when no two
// deaths agree.
func estimateHorizon(ages []time.Duration) time.Duration {
	var buf [horizonSamples]time.Duration
	s := buf[:copy(buf[:], ages)]
	slices.Sort(s)
	for i := 0; i+1 < len(s); i++ {
		if s[i+1] <= 2*s[i] {
			return s[i]
		}
	}
	return 0
}

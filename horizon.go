package grpcguard

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The idle horizon: how long a connection of this Dialer's target can stay
// idle before something on the path (a load balancer, a NAT, a proxy, the
// server) kills it. Past it, a connection is retired before a call can pick
// it: closed, released by grpc and redialed, which costs a handshake instead
// of a failed call. It matters most for what no probe can see coming: a
// middlebox that forgot the flow and answers the first bytes with RST.
//
// It is learned from deaths: each conn found dead while idle (a probe, the
// reader's EOF or RST with nothing sent since, a reset answering the first
// write after idle, a failed path check) reports how long it had been idle.
// Middleboxes time out at a fixed idle age and a death is seen at that age or
// later, so the youngest death is the estimate. Robust to one odd death (a
// server that crashed killed idle conns of any age): the youngest is ignored
// when it is less than a quarter of the next youngest. The threshold is wide
// because deaths found on use (a reset of the first bytes, a failed path
// check) are seen whenever the next call comes, well after the horizon; an
// estimate too short costs redials, one too long costs calls. Deaths younger than minIdleDeath
// are not idle deaths (a conn busy a moment ago was killed by something
// else) and are not learned. Conns are retired at retireFraction of the
// estimate, a margin for the spread of detection times.
//
// A conn whose last I/O was a write may have a call waiting for its answer
// (conn.awaiting): it is retired only past the full estimate, where the path
// kills it anyway, so the margin never costs a call in flight.
//
// A death is remembered for horizonMemoryFactor times its idle age, and at
// least horizonMemoryMin: a short horizon that a crash taught (several conns
// killed at once at short ages) is forgotten within minutes, while a load
// balancer's long timeout is remembered across the long gaps between the
// calls that reveal it. When every death is forgotten, nothing is retired
// until the next one.
//
// WithMaxIdle sets the horizon by hand and turns learning off; conns are then
// retired at exactly that idle age, as net/http's IdleConnTimeout does.

const (
	// minIdleDeath is the youngest idle age a death must have to be
	// learned: well under any real middlebox idle timeout (seconds and up),
	// above the quiet gaps of a busy connection.
	minIdleDeath = 25 * time.Millisecond
	// horizonSamples is how many recent deaths the estimate rests on.
	horizonSamples = 8
	// retireFraction: learned horizons retire conns at 80% of the estimate.
	retireFraction = 0.8
	// How long a death is remembered: the factor times its age, at least
	// the minimum.
	horizonMemoryFactor = 16
	horizonMemoryMin    = time.Minute
)

// idleDeath is one learned death: the idle age and when it was seen.
type idleDeath struct {
	age time.Duration
	at  int64 // nanotime
}

func (d idleDeath) expiry() int64 {
	return d.at + int64(max(horizonMemoryMin, horizonMemoryFactor*d.age))
}

// idleHorizon is one Dialer's horizon. observe is called once per dead conn;
// retireAge is read by every scan of the conns, without a lock while no
// death expires.
type idleHorizon struct {
	fixed   time.Duration // WithMaxIdle; learnHorizon (< 0): learned; 0: off
	metrics *Metrics

	mu     sync.Mutex
	deaths [horizonSamples]idleDeath // ring of recent idle deaths; age 0: empty
	next   int

	retire  atomic.Int64 // idle ns after which a conn is retired; 0: never
	full    atomic.Int64 // the horizon itself: the retire age of a conn awaiting an answer
	expires atomic.Int64 // nanotime when a remembered death expires
}

func newIdleHorizon(fixed time.Duration, m *Metrics) *idleHorizon {
	h := &idleHorizon{fixed: fixed, metrics: m}
	h.expires.Store(math.MaxInt64)
	if fixed > 0 {
		h.retire.Store(int64(fixed))
		h.full.Store(int64(fixed))
		m.horizonSet(fixed)
	}
	return h
}

// retireAge returns the idle age at which conns are retired at now, 0 for
// never, and the (longer or equal) one for conns awaiting an answer.
func (h *idleHorizon) retireAge(now int64) (idle, awaiting time.Duration) {
	if now >= h.expires.Load() {
		h.mu.Lock()
		h.updateLocked(now)
		h.mu.Unlock()
	}
	return time.Duration(h.retire.Load()), time.Duration(h.full.Load())
}

// observe learns from a conn that died after age of idle.
func (h *idleHorizon) observe(age time.Duration) {
	h.metrics.staleIdle(age)
	if h.fixed >= 0 || age < minIdleDeath {
		return
	}
	now := nanotime()
	h.mu.Lock()
	h.deaths[h.next] = idleDeath{age: age, at: now}
	h.next = (h.next + 1) % horizonSamples
	h.updateLocked(now)
	h.mu.Unlock()
}

// updateLocked forgets expired deaths and estimates the horizon from the
// others.
func (h *idleHorizon) updateLocked(now int64) {
	var ages [horizonSamples]time.Duration
	n := 0
	expires := int64(math.MaxInt64)
	for i, d := range h.deaths {
		switch {
		case d.age == 0:
		case d.expiry() <= now:
			h.deaths[i] = idleDeath{}
		default:
			ages[n] = d.age
			n++
			expires = min(expires, d.expiry())
		}
	}
	h.expires.Store(expires)
	if n == 0 {
		h.retire.Store(0)
		h.full.Store(0)
		h.metrics.horizonSet(0)
		return
	}
	est := estimateHorizon(ages[:n])
	h.retire.Store(int64(float64(est) * retireFraction))
	h.full.Store(int64(est))
	h.metrics.horizonSet(est)
}

// estimateHorizon returns the youngest death, or the second youngest when the
// youngest is less than a quarter of it (one odd death).
func estimateHorizon(ages []time.Duration) time.Duration {
	var buf [horizonSamples]time.Duration
	s := buf[:copy(buf[:], ages)]
	slices.Sort(s)
	if len(s) >= 2 && s[0] < s[1]/4 {
		return s[1]
	}
	return s[0]
}

package grpcguard

import (
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
// WithMaxIdle sets the horizon by hand and turns learning off; conns are then
// retired at exactly that idle age, as net/http's IdleConnTimeout does.

const (
	// minIdleDeath is the youngest idle age a death must have to be
	// learned: well under any real middlebox idle timeout (seconds and up),
	// above the quiet gaps of a busy connection.
	minIdleDeath = 50 * time.Millisecond
	// horizonSamples is how many recent deaths the estimate rests on.
	horizonSamples = 8
	// retireFraction: learned horizons retire conns at 80% of the estimate.
	retireFraction = 0.8
)

// idleHorizon is one Dialer's horizon. observe is called once per dead conn;
// retireAge is read on every pick, without a lock.
type idleHorizon struct {
	fixed time.Duration // WithMaxIdle; learnHorizon (< 0): learned; 0: off

	mu   sync.Mutex
	ages [horizonSamples]time.Duration // ring of recent idle deaths
	n    int                           // deaths recorded, up to horizonSamples
	next int

	retire atomic.Int64 // idle ns after which a conn is retired; 0: never
}

func newIdleHorizon(fixed time.Duration, m *Metrics) *idleHorizon {
	h := &idleHorizon{fixed: fixed}
	if fixed > 0 {
		h.retire.Store(int64(fixed))
		m.horizonSet(fixed)
	}
	return h
}

// retireAge returns the idle age at which conns are retired, 0 for never.
func (h *idleHorizon) retireAge() time.Duration { return time.Duration(h.retire.Load()) }

// observe learns from a conn that died after age of idle.
func (h *idleHorizon) observe(age time.Duration, m *Metrics) {
	m.staleIdle(age)
	if h.fixed >= 0 || age < minIdleDeath {
		return
	}
	h.mu.Lock()
	h.ages[h.next] = age
	h.next = (h.next + 1) % horizonSamples
	h.n = min(h.n+1, horizonSamples)
	est := estimateHorizon(h.ages[:h.n])
	h.retire.Store(int64(float64(est) * retireFraction))
	h.mu.Unlock()
	m.horizonSet(est)
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

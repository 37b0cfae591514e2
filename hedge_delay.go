package grpcguard

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The adaptive hedge delay: per method, the configured quantile (p95 by
// default) of the latencies of its recent successful calls.
//
// Each method has a fixed ring of the last hedgeWindow latencies. A call
// records its latency with one atomic add (the slot) and one atomic store;
// every hedgeRecomputeEvery samples, the recording call copies the ring to
// its stack, sorts it and estimates the quantile, and the delay published
// (with an atomic store) is the median of the last hedgeRecent estimates. So
// memory is bounded (2 KiB per hedged method), readers never lock, and the
// sort of 256 values is paid once per 16 calls, by a
// call that skips it if another is at it.
//
// The ring forgets: after hedgeWindow calls the estimate reflects only the
// new latencies, so it follows a server that got slower or faster, a few
// recomputes later (the median).
//
// What is recorded is the time from the original attempt's start to the
// call's success. When a hedge wins, that is a lower bound of the original's
// latency (a censored sample), but one above the delay in use, which is all
// a tail quantile needs: it lands in the tail, so hedging cannot drag its own
// delay down. Samples are flagged as censored so that a hedge rate within
// noise of 1-q does not raise the delay (see record).
//
// Why the median: a delay that moves around costs more than a steady one at
// its mean (the p99 is set by the longest delays, the extra load by the
// shortest), and a quantile read from 256 samples moves with their noise,
// most of all when the quantile sits on a latency cliff or among rare
// outliers. On the long-tail benchmark's model (BenchmarkHedgeLongTail,
// TestHedgeDelayOnFrontier) the steadier delay is what puts the adaptive
// delay on the frontier of the fixed ones.

const (
	// hedgeWindow is the number of recent latencies kept per method: enough
	// for a p99 to rest on a few samples, small enough to sort cheaply.
	hedgeWindow = 256
	// hedgeWarmup is the number of samples a method needs before it is
	// hedged on time (non-fatal codes still send hedges at once).
	hedgeWarmup = 20
	// hedgeRecomputeEvery is how often, in samples, the quantile is
	// recomputed.
	hedgeRecomputeEvery = 16
	// hedgeRecent is how many recent estimates the published delay is the
	// median of.
	hedgeRecent = 17
)

// latencyWindow is one method's recent latencies and current quantile.
// A sample is stored as ns<<1 | censored: sorting the encoded values sorts
// by latency and keeps the flag.
type latencyWindow struct {
	n        atomic.Uint64 // samples recorded so far
	quantile atomic.Int64  // ns; 0 until warm
	reported atomic.Int64  // ns; the delay last exported to metrics
	samples  [hedgeWindow]atomic.Int64

	// estimating is held by the call that recomputes; it guards what
	// follows. A call that finds it held skips its recompute.
	estimating sync.Mutex
	recent     [hedgeRecent]int64 // the last estimates, ns
	estimates  int                // estimates made
}

// record adds one call's latency and, now and then, recomputes the quantile
// q. censored says a hedge won: d is then only a lower bound of what the
// original attempt would have taken.
func (w *latencyWindow) record(d time.Duration, censored bool, q float64) {
	v := max(int64(d), 1) << 1
	if censored {
		v |= 1
	}
	n := w.n.Add(1)
	w.samples[(n-1)%hedgeWindow].Store(v)
	if n < hedgeWarmup || (n != hedgeWarmup && n%hedgeRecomputeEvery != 0) {
		return
	}
	if !w.estimating.TryLock() {
		return // another call is recomputing
	}
	defer w.estimating.Unlock()
	m := int(min(n, hedgeWindow))
	var buf [hedgeWindow]int64
	censoredN := 0
	for i := range m {
		// A slot not yet stored by a concurrent recorder reads as 0; it
		// can only pull the quantile down by one rank until the next
		// recompute.
		buf[i] = w.samples[i].Load()
		censoredN += int(buf[i] & 1)
	}
	s := buf[:m]
	slices.Sort(s)
	i := max(0, min(int(math.Ceil(q*float64(m)))-1, m-1))
	v = s[i]
	// A censored sample at the quantile says more than 1-q of the calls
	// were hedged: the delay is too short, and the lower bound moves it
	// up. But within the sampling noise of the target rate (three standard
	// deviations) that is no evidence, and with a latency cliff at the
	// quantile (5% of calls 20x slower) the noise alone would walk the
	// delay up the cliff a hedge latency at a time. So near the target the
	// delay is the largest latency of an original attempt that won, and
	// never more than the current delay: with rare outliers among the fast
	// calls, the largest such latency is an outlier, and taking it would
	// ratchet the delay up to the outliers.
	if v&1 == 1 && float64(censoredN) <= (1-q)*float64(m)+3*math.Sqrt(float64(m)*q*(1-q)) {
		for j := i - 1; j >= 0; j-- {
			if s[j]&1 == 0 {
				v = s[j]
				break
			}
		}
		if cur := w.quantile.Load(); cur > 0 && v>>1 > cur {
			v = cur << 1
		}
	}
	w.recent[w.estimates%hedgeRecent] = max(v>>1, 1)
	w.estimates++
	var med [hedgeRecent]int64
	r := med[:copy(med[:], w.recent[:min(w.estimates, hedgeRecent)])]
	slices.Sort(r)
	w.quantile.Store(r[len(r)/2])
}

// delay returns the hedge delay for a call configured by c: the quantile
// clamped to [hedgeMinDelay, hedgeMaxDelay], or 0 while the method is warming
// up.
func (w *latencyWindow) delay(c *config) time.Duration {
	q := time.Duration(w.quantile.Load())
	if q == 0 {
		return 0
	}
	return min(max(q, c.hedgeMinDelay), c.hedgeMaxDelay)
}

// report exports d as the method's current delay if it changed.
func (w *latencyWindow) report(m *Metrics, mi *methodInfo, d time.Duration) {
	if m == nil || d == 0 {
		return
	}
	if w.reported.Load() != int64(d) && w.reported.Swap(int64(d)) != int64(d) {
		m.hedgeDelaySet(mi, d.Seconds())
	}
}

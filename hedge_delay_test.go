package grpcguard

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// longTail simulates hedged calls against the long-tail benchmark's server
// (BenchmarkHedgeLongTail): attempts take 4ms +-25%, plus up to overhead of
// client and transport, except 5% that take 80ms; jitter of the fast ones
// are up to 5ms slower. A call hedges after delayOf() (0: never), up to 3
// attempts; record, if set, sees each call as the adaptive delay does. It
// returns the calls' p99 in ms and the extra attempts in percent.
func longTail(rng *rand.Rand, calls int, overhead time.Duration, jitter float64,
	delayOf func() time.Duration, record func(time.Duration, bool)) (p99, extra float64) {
	draw := func() time.Duration {
		d := time.Duration(float64(4*time.Millisecond)*(0.75+0.5*rng.Float64())) + time.Duration(rng.Float64()*float64(overhead))
		if rng.Float64() < jitter {
			d += time.Duration(rng.Float64() * float64(5*time.Millisecond))
		}
		if rng.Float64() < 0.05 {
			d = 80 * time.Millisecond
		}
		return d
	}
	lat := make([]time.Duration, calls)
	hedges := 0
	for i := range calls {
		d, end, hedgeWon := delayOf(), draw(), false
		for k := 1; d > 0 && k < 3; k++ {
			start := time.Duration(k) * d
			if start >= end {
				break
			}
			hedges++
			if e := start + draw(); e < end {
				end, hedgeWon = e, true
			}
		}
		lat[i] = end
		if record != nil {
			record(end, hedgeWon)
		}
	}
	slices.Sort(lat)
	return float64(lat[calls*99/100]) / float64(time.Millisecond), 100 * float64(hedges) / float64(calls)
}

// TestHedgeDelayOnFrontier: on the long-tail model, with and without rare
// slow outliers among the fast calls, the default adaptive delay sends
// about 1-q extra attempts, and its p99 is within 0.3ms of the frontier the
// fixed delays draw: of what the best fixed delays give for the same extra
// attempts (interpolated between the two fixed delays around it). A
// deterministic simulation, so that the estimator is judged apart from the
// machine's noise; BenchmarkHedgeLongTail measures the same over a real
// connection.
func TestHedgeDelayOnFrontier(t *testing.T) {
	const calls, overhead = 20_000, 1500 * time.Microsecond
	for _, jitter := range []float64{0, 0.01} {
		c := defaultConfig()
		var w latencyWindow
		rng := rand.New(rand.NewPCG(1, 2))
		record := func(d time.Duration, censored bool) { w.record(d, censored, c.hedgeQuantile) }
		longTail(rng, 2000, overhead, jitter, func() time.Duration { return w.delay(&c) }, record) // warm-up
		p99, extra := longTail(rng, calls, overhead, jitter, func() time.Duration { return w.delay(&c) }, record)
		if extra > 6.5 {
			t.Errorf("jitter %v: adaptive sends %.2f%% extra attempts, want about 5%%", jitter, extra)
		}
		type point struct{ extra, p99 float64 }
		var fixed []point
		for d := 5 * time.Millisecond; d <= 12*time.Millisecond; d += 250 * time.Microsecond {
			fp99, fextra := longTail(rand.New(rand.NewPCG(1, 2)), calls, overhead, jitter, func() time.Duration { return d }, nil)
			fixed = append(fixed, point{fextra, fp99})
		}
		// The frontier at the adaptive delay's extra attempts: the lowest p99
		// of a fixed delay, or of a line between two, at that many.
		best := p99 + 100
		for _, a := range fixed {
			for _, b := range fixed {
				if a.extra <= extra && extra <= b.extra && a.extra < b.extra {
					best = min(best, a.p99+(b.p99-a.p99)*(extra-a.extra)/(b.extra-a.extra))
				}
				if a.extra <= extra {
					best = min(best, a.p99)
				}
			}
		}
		t.Logf("jitter %v: adaptive p99 %.2fms with %.2f%% extra; the fixed delays' frontier there %.2fms", jitter, p99, extra, best)
		if p99 > best+0.3 {
			t.Errorf("jitter %v: adaptive p99 %.2fms is off the fixed delays' frontier (%.2fms at %.2f%% extra)", jitter, p99, best, extra)
		}
	}
}

// TestHedgeDelayFollowsShift: when the server gets twice slower, and then
// fast again, the delay follows within a few hundred calls.
func TestHedgeDelayFollowsShift(t *testing.T) {
	c := defaultConfig()
	var w latencyWindow
	rng := rand.New(rand.NewPCG(5, 6))
	feed := func(median time.Duration, n int) {
		for range n {
			w.record(time.Duration(float64(median)*(0.75+0.5*rng.Float64())), false, c.hedgeQuantile)
		}
	}
	feed(4*time.Millisecond, 1000)
	if d := w.delay(&c); d < 4800*time.Microsecond || d > 5*time.Millisecond {
		t.Errorf("delay %v at a 4ms median, want the p95 of 3-5ms (4.9ms, clamped to 5ms)", d)
	}
	feed(8*time.Millisecond, 500)
	if d := w.delay(&c); d < 9*time.Millisecond || d > 10*time.Millisecond {
		t.Errorf("delay %v 500 calls after the median went to 8ms, want about 9.8ms", d)
	}
	feed(4*time.Millisecond, 500)
	if d := w.delay(&c); d > 5*time.Millisecond {
		t.Errorf("delay %v 500 calls after the median went back to 4ms, want 5ms", d)
	}
}

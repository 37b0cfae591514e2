package grpcguard

import (
	"math"
	"sync"
	"time"
)

// budget limits the extra attempts (retries or hedges) an interceptor sends,
// so that a struggling server does not see its load multiplied. It has two
// forms:
//
//   - a ratio budget (the default, as Finagle and Linkerd): extra attempts in
//     the last window may not exceed ratio times the calls in that window,
//     plus minPerSecond per second of the window;
//   - gRFC A6 retry throttling, when maxTokens > 0: a token bucket drained by
//     failed attempts and refilled by successes; extra attempts are allowed
//     while it holds more than half.
//
// Exhaustion only refuses new extra attempts; nothing in flight is touched.
type budget struct {
	cfg budgetConfig

	mu      sync.Mutex
	buckets []budgetBucket // one per second of the window, indexed by second
	tokens  float64
}

type budgetBucket struct {
	second int64
	calls  float64
	spent  float64
}

func newBudget(cfg budgetConfig) *budget {
	b := &budget{cfg: cfg, tokens: cfg.maxTokens}
	if cfg.maxTokens == 0 {
		n := int(math.Ceil(cfg.window.Seconds()))
		if n < 1 {
			n = 1
		}
		b.buckets = make([]budgetBucket, n)
	}
	return b
}

// bucket returns the bucket of the current second, emptied if it held an
// older second. Called with mu held.
func (b *budget) bucket(second int64) *budgetBucket {
	bk := &b.buckets[second%int64(len(b.buckets))]
	if bk.second != second {
		*bk = budgetBucket{second: second}
	}
	return bk
}

func nowSecond() int64 { return nanotime() / int64(time.Second) }

// call records a new call (not an attempt): it is what earns extra attempts.
func (b *budget) call() {
	if b.cfg.maxTokens > 0 {
		return
	}
	s := nowSecond()
	b.mu.Lock()
	b.bucket(s).calls++
	b.mu.Unlock()
}

// allow takes one extra attempt from the budget, or reports that there is
// none left.
func (b *budget) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cfg.maxTokens > 0 {
		return b.tokens > b.cfg.maxTokens/2
	}
	s := nowSecond()
	var calls, spent float64
	for i := range b.buckets {
		bk := &b.buckets[i]
		if bk.second > s-int64(len(b.buckets)) {
			calls += bk.calls
			spent += bk.spent
		}
	}
	limit := b.cfg.ratio*calls + b.cfg.minPerSecond*float64(len(b.buckets))
	if spent+1 > limit {
		return false
	}
	b.bucket(s).spent++
	return true
}

// result feeds an attempt's outcome to A6 throttling: a failure with a
// retryable (or non-fatal) code drains one token, a success refills
// tokenRatio. The ratio budget ignores it.
func (b *budget) result(failed bool) {
	if b.cfg.maxTokens == 0 {
		return
	}
	b.mu.Lock()
	if failed {
		b.tokens = math.Max(0, b.tokens-1)
	} else {
		b.tokens = math.Min(b.cfg.maxTokens, b.tokens+b.cfg.tokenRatio)
	}
	b.mu.Unlock()
}

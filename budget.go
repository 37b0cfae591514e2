package grpcguard

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// budget is the one budget of a client's extra attempts: retries, stream
// retries, hedges and hedged calls' resends all spend from it, so that a
// struggling server never sees its load multiplied by more than the budget
// says, whichever mechanism sends. It has two forms:
//
//   - a ratio budget (the default, as Finagle and Linkerd): extra attempts in
//     the last window may not exceed ratio times the calls of that window
//     plus minPerSecond per second of the window. The floor is what lets a
//     fresh or quiet client retry and hedge at all. Attempts started by the
//     hedge delay may take only hedgeRatio times the calls plus half the
//     floor (none at all when hedgeRatio is 0), so that hedges never leave
//     retries without room;
//   - gRFC A6 retry throttling, when maxTokens > 0: a token bucket that every
//     failed attempt (retried or hedged) drains by 1 and every successful one
//     refills by tokenRatio; extra attempts of either kind are allowed while
//     it holds more than half.
//
// The bound a client adds, in any window W of the ratio budget:
//
//	extra attempts <= ratio*calls(W) + minPerSecond*W
//
// and at most WithMaxAttempts-1 per call. Exhaustion only refuses new extra
// attempts; nothing in flight is touched.
//
// Counting a call is on every call's path: it takes no lock (an atomic add on
// the bucket of the current second). Spending, which only extra attempts do,
// takes mu. Safe for concurrent use.
type budget struct {
	cfg        budgetConfig
	floor      float64 // minPerSecond * window seconds
	hedgeFloor float64 // the part of the floor hedges may use

	buckets []budgetBucket // one per second of the window, indexed by second

	// mu guards the buckets' rotation and their spent and hedged counts.
	mu sync.Mutex

	tokens atomic.Uint64 // float64 bits: A6 tokens
}

type budgetBucket struct {
	second atomic.Int64 // the second the bucket counts; only grows, under mu
	calls  atomic.Int64
	spent  float64 // extra attempts of any kind; guarded by budget.mu
	hedged float64 // of which started by the hedge delay; guarded by budget.mu
}

// Extra attempt kinds.
const (
	extraRetry = iota // a retry, a stream retry, a hedged call's resend after a failure
	extraHedge        // an attempt started by the hedge delay
)

func newBudget(cfg budgetConfig) *budget {
	b := &budget{cfg: cfg}
	if cfg.maxTokens > 0 {
		b.tokens.Store(math.Float64bits(cfg.maxTokens))
		return b
	}
	n := max(int(math.Ceil(cfg.window.Seconds())), 1)
	b.buckets = make([]budgetBucket, n)
	b.floor = cfg.minPerSecond * float64(n)
	if cfg.hedgeRatio > 0 {
		b.hedgeFloor = b.floor / 2
	}
	return b
}

// bucket returns the bucket of second s, emptied first if it held an older
// second. A bucket only moves forward: a caller that read the clock before
// the second turned and counts late adds to the newer second, which is
// harmless.
func (b *budget) bucket(s int64) *budgetBucket {
	bk := &b.buckets[s%int64(len(b.buckets))]
	if bk.second.Load() < s {
		b.mu.Lock()
		if bk.second.Load() < s {
			bk.calls.Store(0)
			bk.spent, bk.hedged = 0, 0
			bk.second.Store(s)
		}
		b.mu.Unlock()
	}
	return bk
}

// call records a new call (not an attempt) that started at now (nanotime):
// calls are what earn extra attempts. The caller passes a clock reading it
// already has. It takes no lock.
func (b *budget) call(now int64) {
	if b.cfg.maxTokens > 0 {
		return
	}
	b.bucket(now / int64(time.Second)).calls.Add(1)
}

// allow takes one extra attempt of the given kind from the budget, or
// reports that there is none left.
func (b *budget) allow(kind int) bool {
	if b.cfg.maxTokens > 0 {
		return math.Float64frombits(b.tokens.Load()) > b.cfg.maxTokens/2
	}
	s := nanotime() / int64(time.Second)
	cur := b.bucket(s)
	b.mu.Lock()
	defer b.mu.Unlock()
	var calls, spent, hedged float64
	for i := range b.buckets {
		bk := &b.buckets[i]
		if bk.second.Load() > s-int64(len(b.buckets)) {
			calls += float64(bk.calls.Load())
			spent += bk.spent
			hedged += bk.hedged
		}
	}
	if spent+1 > b.cfg.ratio*calls+b.floor {
		return false
	}
	if kind == extraHedge {
		if hedged+1 > b.cfg.hedgeRatio*calls+b.hedgeFloor {
			return false
		}
		cur.hedged++
	}
	cur.spent++
	return true
}

// result feeds one attempt's outcome to A6 throttling: a failure with a code
// that may be resent drains one token, a success refills tokenRatio. The
// ratio budget ignores it. It takes no lock.
func (b *budget) result(failed bool) {
	if b.cfg.maxTokens == 0 {
		return
	}
	for {
		old := b.tokens.Load()
		t := math.Float64frombits(old)
		if failed {
			t = math.Max(0, t-1)
		} else {
			t = math.Min(b.cfg.maxTokens, t+b.cfg.tokenRatio)
		}
		if old == math.Float64bits(t) || b.tokens.CompareAndSwap(old, math.Float64bits(t)) {
			return
		}
	}
}

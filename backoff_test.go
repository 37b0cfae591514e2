package grpcguard

import (
	"context"
	"math"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

func TestBackoffCap(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{1, 50 * time.Millisecond},
		{2, 100 * time.Millisecond},
		{3, 200 * time.Millisecond},
		{7, 3200 * time.Millisecond},
		{8, 5 * time.Second}, // 6.4s capped
		{1000, 5 * time.Second},
	} {
		if got := backoffCap(DefaultInitialBackoff, DefaultMaxBackoff, DefaultBackoffMultiplier, tc.n); got != tc.want {
			t.Errorf("backoffCap(n=%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

func TestBackoffFullJitterRange(t *testing.T) {
	capd := 100 * time.Millisecond
	if got := fullJitter(capd, func(n int64) int64 { return 0 }); got != 0 {
		t.Errorf("lowest draw = %v, want 0", got)
	}
	if got := fullJitter(capd, func(n int64) int64 { return n - 1 }); got != capd {
		t.Errorf("highest draw = %v, want %v (the cap is included)", got, capd)
	}
	c := defaultConfig().call
	for n := 1; n <= 10; n++ {
		for range 50 {
			got := c.backoff(context.Background(), n)
			if hi := backoffCap(c.initialBackoff, c.maxBackoff, c.backoffMultiplier, n); got < 0 || got > hi {
				t.Fatalf("backoff(%d) = %v, outside [0, %v]", n, got, hi)
			}
		}
	}
}

func TestBackoffFuncAttemptNumbering(t *testing.T) {
	var seen []uint
	c, err := newConfig([]Option{WithBackoffFunc(func(_ context.Context, attempt uint) time.Duration {
		seen = append(seen, attempt)
		return -time.Second // negative waits count as none
	})})
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 3; n++ {
		if got := c.call.backoff(context.Background(), n); got != 0 {
			t.Errorf("backoff = %v, want 0", got)
		}
	}
	if len(seen) != 3 || seen[0] != 1 || seen[2] != 3 {
		t.Errorf("BackoffFunc saw attempts %v, want [1 2 3]", seen)
	}
}

func TestPushbackParsing(t *testing.T) {
	for _, tc := range []struct {
		md          metadata.MD
		wait        time.Duration
		found, stop bool
	}{
		{nil, 0, false, false},
		{metadata.Pairs("other", "1"), 0, false, false},
		{metadata.Pairs(pushbackKey, "0"), 0, true, false},
		{metadata.Pairs(pushbackKey, "300"), 300 * time.Millisecond, true, false},
		{metadata.Pairs(pushbackKey, "-1"), 0, true, true},
		{metadata.Pairs(pushbackKey, "soon"), 0, true, true},
		{metadata.Pairs(pushbackKey, "1", pushbackKey, "2"), 0, true, true},
	} {
		wait, found, stop := pushback(tc.md)
		if wait != tc.wait || found != tc.found || stop != tc.stop {
			t.Errorf("pushback(%v) = %v %v %v, want %v %v %v", tc.md, wait, found, stop, tc.wait, tc.found, tc.stop)
		}
	}
}

// A service config's retryPolicy backs off as amended gRFC A6 says (grpc-go
// stream.go since grpc-go#7514): min(initial*multiplier^(n-1), max) times a
// factor in [0.8, 1.2); WithBackoff, also given to one call, keeps full
// jitter, [0, cap].
func TestBackoffServiceConfigA6Jitter(t *testing.T) {
	if got := a6Jitter(100*time.Millisecond, func() float64 { return 0 }); got != 80*time.Millisecond {
		t.Errorf("lowest draw = %v, want 80ms", got)
	}
	if got := a6Jitter(100*time.Millisecond, func() float64 { return 0.5 }); got != 100*time.Millisecond {
		t.Errorf("middle draw = %v, want 100ms", got)
	}
	if got := a6Jitter(math.MaxInt64, func() float64 { return 0.999 }); got != math.MaxInt64 {
		t.Errorf("1.2 times a saturated cap = %v, want MaxInt64", got)
	}

	// echoRetry: 0.1s doubling to 1s, so retry 5 is capped at 1s.
	cs := newClientState(mustConfig(t, WithServiceConfig(echoRetry)), &clientRuntime{})
	const m = "/grpc.testing.Echo/Echo"
	var p plan
	if err := cs.planFor(&p, m, nil); err != nil {
		t.Fatal(err)
	}
	const samples = 2000
	for n := 1; n <= 5; n++ {
		capd := backoffCap(p.initialBackoff, p.maxBackoff, p.backoffMultiplier, n)
		lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
		for range samples {
			d := p.backoff(context.Background(), n)
			lo, hi = min(lo, d), max(hi, d)
		}
		if float64(lo) < 0.8*float64(capd) || float64(hi) >= 1.2*float64(capd) {
			t.Errorf("retry %d: waits in [%v, %v], want within [0.8, 1.2) x %v", n, lo, hi, capd)
		}
		// 2000 uniform draws reach within 2% of both ends but with a
		// probability of about 1e-17.
		if float64(lo) > 0.82*float64(capd) || float64(hi) < 1.18*float64(capd) {
			t.Errorf("retry %d: waits in [%v, %v] do not spread over [0.8, 1.2) x %v", n, lo, hi, capd)
		}
	}

	// WithBackoff given to the call: full jitter again, reaching well below
	// 0.8 x the cap.
	if err := cs.planFor(&p, m, []grpc.CallOption{WithBackoff(100*time.Millisecond, time.Second, 2)}); err != nil {
		t.Fatal(err)
	}
	lo := time.Duration(math.MaxInt64)
	for range samples {
		d := p.backoff(context.Background(), 1)
		if d < 0 || d > 100*time.Millisecond {
			t.Fatalf("WithBackoff: wait %v outside [0, 100ms]", d)
		}
		lo = min(lo, d)
	}
	if lo > 10*time.Millisecond {
		t.Errorf("WithBackoff: the shortest of %d waits is %v: not full jitter", samples, lo)
	}
}

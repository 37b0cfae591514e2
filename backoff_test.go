package grpcguard

import (
	"context"
	"testing"
	"time"

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

package grpcguard

import (
	"context"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"google.golang.org/grpc/metadata"
)

// pushbackKey is the trailer by which a server tells the client when to retry
// (gRFC A6): a non-negative integer is the wait in milliseconds before the
// next attempt, anything else means "do not retry".
const pushbackKey = "grpc-retry-pushback-ms"

// previousAttemptsKey is the metadata a retry carries (gRFC A6): the number of
// attempts made before this one.
const previousAttemptsKey = "grpc-previous-rpc-attempts"

// backoffCap returns the upper bound of the wait before retry n (n >= 1):
// min(initial*multiplier^(n-1), max).
func backoffCap(initial, max time.Duration, multiplier float64, n int) time.Duration {
	if n < 1 {
		n = 1
	}
	f := float64(initial) * math.Pow(multiplier, float64(n-1))
	if !(f < float64(max)) { // also catches +Inf and NaN
		return max
	}
	return time.Duration(f)
}

// fullJitter returns a wait drawn uniformly from [0, cap] (AWS's "full
// jitter": contending clients spread out instead of retrying in step). It is
// WithBackoff's, and what gRFC A6 specified before its amendment.
// draw returns a uniform value in [0, n); it is rand.Int64N outside tests.
func fullJitter(cap time.Duration, draw func(n int64) int64) time.Duration {
	if cap <= 0 {
		return 0
	}
	return time.Duration(draw(int64(min(cap, math.MaxInt64-1)) + 1)) // +1 must not overflow
}

// a6Jitter returns cap times a factor drawn uniformly from [0.8, 1.2): the
// jitter of gRFC A6 as amended (grpc/proposal#452, grpc-go#7514, grpc-go
// stream.go since v1.69), for a service config's retryPolicy. The wait may
// exceed maxBackoff by up to 20%, as in grpc-go. draw returns a uniform value
// in [0, 1); it is rand.Float64 outside tests.
func a6Jitter(cap time.Duration, draw func() float64) time.Duration {
	f := float64(cap) * (0.8 + 0.4*draw())
	if !(f < math.MaxInt64) { // 1.2 times a saturated maxBackoff; float64(MaxInt64) is 2^63
		return math.MaxInt64
	}
	return max(time.Duration(f), 0)
}

// backoff returns the wait before retry n (n = 1 before the first retry) of a
// failure the server returned: from the user's BackoffFunc if set, else
// min(initial*multiplier^(n-1), max) jittered, as the backoff's source says
// (a6Jitter for a service config's retryPolicy, fullJitter for WithBackoff
// and the defaults).
func (c *callSettings) backoff(ctx context.Context, n int) time.Duration {
	if c.backoffFunc != nil {
		return max(c.backoffFunc(ctx, uint(n)), 0)
	}
	cap := backoffCap(c.initialBackoff, c.maxBackoff, c.backoffMultiplier, n)
	if c.a6Jitter {
		return a6Jitter(cap, rand.Float64)
	}
	return fullJitter(cap, rand.Int64N)
}

// pushback reads the server's retry pushback from an attempt's trailer. found
// is false when the trailer does not carry one. stop is true when it says not
// to retry: a negative or unparsable value, or more than one value (as
// grpc-go's own retry treats them). Otherwise wait is the exact wait before
// the next attempt.
func pushback(trailer metadata.MD) (wait time.Duration, found, stop bool) {
	if len(trailer) == 0 {
		return 0, false, false
	}
	vs := trailer[pushbackKey] // metadata keys are lower case
	switch len(vs) {
	case 0:
		return 0, false, false
	case 1:
	default:
		return 0, true, true
	}
	ms, err := strconv.ParseInt(vs[0], 10, 64)
	if err != nil || ms < 0 {
		return 0, true, true
	}
	if ms > int64(math.MaxInt64/time.Millisecond) {
		ms = int64(math.MaxInt64 / time.Millisecond)
	}
	return time.Duration(ms) * time.Millisecond, true, false
}

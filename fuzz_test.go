package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Fuzz targets. With plain `go test` their seeds run as unit tests; run one
// for real with, for example:
//
//	go test -run '^$' -fuzz FuzzPushback -fuzztime 60s .

// FuzzPushback checks that the parser of grpc-retry-pushback-ms, which retry
// and hedging share, never panics and that found/stop/wait keep gRFC A6's
// meaning.
//
// The trailer is built from the fuzzed values: count of them (0 to 3) under
// the key, spelled as keyForm selects (0: lower case as grpc delivers it; 1:
// mixed case stored raw, which grpc never delivers; 2: mixed case through
// metadata.Pairs, which lower-cases; 3: another key), plus an unrelated entry
// when extra is set.
func FuzzPushback(f *testing.F) {
	for _, v := range []string{"0", "1", "100", "-1", "", " 1", "1 ", "+5", "0x10", "1e3", "abc",
		"9223372036854775807", "9223372036854775808", "4611686018427", "4611686018428",
		"9223372036854", "9223372036855", "-0", "007", "１"} {
		f.Add(uint8(1), uint8(0), false, v, "", "")
	}
	f.Add(uint8(0), uint8(0), true, "", "", "")
	f.Add(uint8(2), uint8(0), false, "1", "2", "")
	f.Add(uint8(3), uint8(0), true, "1", "1", "1")
	f.Add(uint8(1), uint8(1), false, "5", "", "")
	f.Add(uint8(1), uint8(2), false, "5", "", "")
	f.Add(uint8(1), uint8(3), true, "5", "", "")
	f.Fuzz(func(t *testing.T, count, keyForm uint8, extra bool, v1, v2, v3 string) {
		vals := []string{v1, v2, v3}[:count%4]
		md := metadata.MD{}
		switch keyForm % 4 {
		case 0:
			md[pushbackKey] = vals
		case 1:
			md["Grpc-Retry-Pushback-Ms"] = vals
		case 2:
			for _, v := range vals {
				md = metadata.Join(md, metadata.Pairs("Grpc-Retry-Pushback-MS", v))
			}
		case 3:
			md["grpc-retry-pushback"] = vals
		}
		if extra {
			md["grpc-status-details-bin"] = []string{"x"}
		}
		w1, found1, stop1 := pushback(md) // retry and hedging share this parser
		if w1 < 0 || (stop1 && (!found1 || w1 != 0)) || (!found1 && w1 != 0) {
			t.Fatalf("%v: inconsistent result (%v, found %v, stop %v)", md, w1, found1, stop1)
		}
		if keyForm%4 == 1 || keyForm%4 == 3 || count%4 == 0 {
			if found1 {
				t.Fatalf("%v: found a pushback under another key", md)
			}
		}
	})
}

// fuzzedOptions is one set of option arguments decoded from fuzz input, with
// the error message each option must produce ("" when valid), derived from
// the documented ranges, not from options.go.
type fuzzedOption struct {
	name string
	opt  Option
	want string // the exact error text, or "" when valid
}

func inv(name string, value any, reason string) string {
	return fmt.Sprintf("grpcguard: invalid option: %s(%v): %s", name, value, reason)
}

// codesFrom turns each byte into a code; 0x80 and above become codes beyond
// Unauthenticated (16), which are not gRPC status codes.
func codesFrom(b []byte) []codes.Code {
	cs := make([]codes.Code, len(b))
	for i, x := range b {
		cs[i] = codes.Code(x % 20)
		if x >= 0x80 {
			cs[i] = codes.Code(uint32(x) << 20)
		}
	}
	return cs
}

func codeListErr(name string, cs []codes.Code) string {
	for _, c := range cs {
		if c == codes.OK || c > codes.Unauthenticated {
			return inv(name, c, "must be a non-OK gRPC status code")
		}
	}
	return ""
}

func methodErr(methods []string) string {
	for _, m := range methods {
		parts := strings.Split(m, "/")
		if len(parts) != 3 || parts[0] != "" || parts[1] == "" || parts[2] == "" {
			return inv("WithIdempotentMethods", fmt.Sprintf("%q", m),
				`must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`)
		}
	}
	return ""
}

// FuzzOptions builds every validating option from fuzzed numbers and checks
// that newConfig never panics, fails exactly when some value is out of its
// documented range, and then reports every invalid option, each once, with
// its exact message, all wrapping ErrInvalidOption. Valid configs are then
// used a little (backoff caps, per-call overrides) to find values that pass
// validation but break arithmetic.
func FuzzOptions(f *testing.F) {
	ms := int64(time.Millisecond)
	s := int64(time.Second)
	// Defaults, all valid.
	f.Add(uint32(math.MaxUint32), 100*ms, int64(0), 15*s, 5*s, 3, 20*s, 3, 50*ms, 5*s, 2.0, int64(0), 256<<10,
		0.1, 10.0, 10*s, 10.0, 0.1, int64(0), 0.95, 5*ms, s, 0.1, []byte{14}, []byte{14}, "/a.B/C")
	// Everything invalid.
	f.Add(uint32(math.MaxUint32), -ms, -1*ms, -1*s, 0*s, 0, -ms, 0, 0*ms, -1*s, 0.5, -ms, -1,
		1.5, -1.0, s-1, 0.0, 0.0, -ms, 1.0, 0*ms, -1*s, 2.0, []byte{0}, []byte{0x80}, "nope")
	// Edges.
	f.Add(uint32(math.MaxUint32), int64(0), int64(0), int64(0), -1*s, -5, int64(math.MaxInt32)*ms, 10, ms/ms, ms/ms, 1.0, int64(0), 0,
		0.0, 0.0, s, 1000.0, 1000.0, int64(0), 0.5, ms/ms, ms/ms, 0.0, []byte{}, []byte{16}, "/a.B/*")
	f.Add(uint32(math.MaxUint32), int64(0), int64(0), 1*s, 1*s, 1, int64(math.MaxInt32)*ms+1, 11, 2*ms, ms, math.Inf(1), int64(0), 0,
		math.NaN(), math.Inf(1), s, 1000.5, math.NaN(), int64(0), math.NaN(), 2*ms, ms, math.NaN(), []byte{17}, []byte{3, 0}, "/a.B/C/D")
	f.Add(uint32(0x5555), int64(math.MaxInt64), int64(math.MinInt64), int64(math.MaxInt64), int64(math.MaxInt64), math.MaxInt, int64(math.MaxInt64),
		math.MinInt, int64(math.MaxInt64), int64(math.MaxInt64), math.MaxFloat64, int64(math.MaxInt64), math.MaxInt,
		-0.0, math.MaxFloat64, int64(math.MaxInt64), math.SmallestNonzeroFloat64, math.SmallestNonzeroFloat64,
		int64(math.MaxInt64), math.Nextafter(1, 0), int64(math.MaxInt64), int64(math.MaxInt64), 1.0, []byte{2, 4}, []byte{}, "//")
	f.Fuzz(func(t *testing.T, mask uint32, probe, sweep, kaIdle, kaIntvl int64, kaCount int, userTimeout int64,
		maxAttempts int, initial, maxBackoff int64, mult float64, perAttempt int64, bufSize int,
		ratio, minPerSec float64, window int64, maxTokens, tokenRatio float64,
		hedgeDelay int64, quantile float64, hMin, hMax int64, hedgeBudget float64,
		retryCodes, nonFatal []byte, method string) {
		d := func(v int64) time.Duration { return time.Duration(v) }
		var all []fuzzedOption
		add := func(name string, o Option, want string) { all = append(all, fuzzedOption{name, o, want}) }

		add("WithProbeAfterIdle", WithProbeAfterIdle(d(probe)), ifs(probe < 0, inv("WithProbeAfterIdle", d(probe), "must not be negative")))
		add("WithSweepInterval", WithSweepInterval(d(sweep)), ifs(sweep < 0, inv("WithSweepInterval", d(sweep), "must not be negative")))
		var kaWant string
		switch {
		case kaIdle < 0:
			kaWant = inv("WithKeepAlive", d(kaIdle), "idle must not be negative")
		case kaIdle > 0 && kaIntvl <= 0:
			kaWant = inv("WithKeepAlive", d(kaIntvl), "interval must be positive")
		case kaIdle > 0 && kaCount <= 0:
			kaWant = inv("WithKeepAlive", kaCount, "count must be positive")
		case kaIdle > int64(32767*time.Second):
			kaWant = inv("WithKeepAlive", d(kaIdle), "idle must be at most 32767s")
		case kaIdle > 0 && kaIntvl > int64(32767*time.Second):
			kaWant = inv("WithKeepAlive", d(kaIntvl), "interval must be at most 32767s")
		case kaIdle > 0 && kaCount > 127:
			kaWant = inv("WithKeepAlive", kaCount, "count must be at most 127")
		}
		add("WithKeepAlive", WithKeepAlive(d(kaIdle), d(kaIntvl), kaCount), kaWant)
		var utWant string
		switch {
		case userTimeout < 0:
			utWant = inv("WithUserTimeout", d(userTimeout), "must not be negative")
		case userTimeout > math.MaxInt32*int64(time.Millisecond): // TCP_USER_TIMEOUT is a 32-bit count of ms
			utWant = inv("WithUserTimeout", d(userTimeout), "must fit in 32-bit milliseconds")
		}
		add("WithUserTimeout", WithUserTimeout(d(userTimeout)), utWant)
		add("WithMaxAttempts", WithMaxAttempts(maxAttempts),
			ifs(maxAttempts < 1 || maxAttempts > 10, inv("WithMaxAttempts", maxAttempts, "must be between 1 and 10")))
		rc := codesFrom(retryCodes)
		add("WithRetryableCodes", WithRetryableCodes(rc...), codeListErr("WithRetryableCodes", rc))
		methods := strings.Split(method, ",")
		add("WithIdempotentMethods", WithIdempotentMethods(methods...), methodErr(methods))
		var boWant string
		switch {
		case initial <= 0:
			boWant = inv("WithBackoff", d(initial), "initial must be positive")
		case maxBackoff < initial:
			boWant = inv("WithBackoff", d(maxBackoff), "max must be at least initial")
		case math.IsNaN(mult) || math.IsInf(mult, 0) || mult < 1:
			boWant = inv("WithBackoff", mult, "multiplier must be a finite number >= 1")
		}
		add("WithBackoff", WithBackoff(d(initial), d(maxBackoff), mult), boWant)
		add("WithPerAttemptTimeout", WithPerAttemptTimeout(d(perAttempt)),
			ifs(perAttempt < 0, inv("WithPerAttemptTimeout", d(perAttempt), "must not be negative")))
		add("WithRetryBufferSize", WithRetryBufferSize(bufSize), ifs(bufSize < 0, inv("WithRetryBufferSize", bufSize, "must not be negative")))
		var budgetWant string
		switch {
		case math.IsNaN(ratio) || ratio < 0 || ratio > 1:
			budgetWant = inv("WithRetryBudget", ratio, "ratio must be in [0, 1]")
		case math.IsNaN(minPerSec) || math.IsInf(minPerSec, 0) || minPerSec < 0:
			budgetWant = inv("WithRetryBudget", minPerSec, "minPerSecond must be a finite number >= 0")
		case window < int64(time.Second) || window > int64(time.Hour):
			budgetWant = inv("WithRetryBudget", d(window), "window must be between 1s and 1h")
		}
		add("WithRetryBudget", WithRetryBudget(ratio, minPerSec, d(window)), budgetWant)
		var thrWant string
		switch {
		case math.IsNaN(maxTokens) || maxTokens <= 0 || maxTokens > 1000:
			thrWant = inv("WithRetryThrottling", maxTokens, "maxTokens must be in (0, 1000]")
		case math.IsNaN(tokenRatio) || tokenRatio <= 0 || tokenRatio > 1000:
			thrWant = inv("WithRetryThrottling", tokenRatio, "tokenRatio must be in (0, 1000]")
		}
		add("WithRetryThrottling", WithRetryThrottling(maxTokens, tokenRatio), thrWant)
		add("WithHedgeDelay", WithHedgeDelay(d(hedgeDelay)), ifs(hedgeDelay < 0, inv("WithHedgeDelay", d(hedgeDelay), "must not be negative")))
		var ahWant string
		switch {
		case math.IsNaN(quantile) || quantile <= 0 || quantile >= 1:
			ahWant = inv("WithAdaptiveHedgeDelay", quantile, "quantile must be in (0, 1)")
		case hMin <= 0:
			ahWant = inv("WithAdaptiveHedgeDelay", d(hMin), "min must be positive")
		case hMax < hMin:
			ahWant = inv("WithAdaptiveHedgeDelay", d(hMax), "max must be at least min")
		}
		add("WithAdaptiveHedgeDelay", WithAdaptiveHedgeDelay(quantile, d(hMin), d(hMax)), ahWant)
		nf := codesFrom(nonFatal)
		add("WithNonFatalCodes", WithNonFatalCodes(nf...), codeListErr("WithNonFatalCodes", nf))
		add("WithHedgeBudget", WithHedgeBudget(hedgeBudget),
			ifs(math.IsNaN(hedgeBudget) || hedgeBudget < 0 || hedgeBudget > 1, inv("WithHedgeBudget", hedgeBudget, "ratio must be in [0, 1]")))
		add("WithBackoffFunc", WithBackoffFunc(nil), inv("WithBackoffFunc", "nil", "must not be nil"))

		// The mask picks the options; the rest are left out.
		var opts []Option
		var want []string
		var callOpts []grpc.CallOption // the CallOptions among them
		wantCall := ""                 // the first invalid CallOption's error
		for i, o := range all {
			if mask&(1<<i) == 0 {
				continue
			}
			opts = append(opts, o.opt)
			if o.want != "" {
				want = append(want, o.want)
			}
			if co, ok := o.opt.(CallOption); ok {
				callOpts = append(callOpts, co)
				if wantCall == "" {
					wantCall = o.want
				}
			}
		}
		cfg, err := newConfig(opts)
		if len(want) == 0 {
			if err != nil {
				t.Fatalf("valid options rejected: %v", err)
			}
			checkValidConfig(t, &cfg)
		} else {
			if err == nil {
				t.Fatalf("invalid options accepted; want:\n%s", strings.Join(want, "\n"))
			}
			if !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("error does not wrap ErrInvalidOption: %v", err)
			}
			if got := err.Error(); got != strings.Join(want, "\n") {
				t.Fatalf("error:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
			}
		}

		// The CallOptions among them as a call's options: the first invalid
		// one fails the call with InvalidArgument and its text.
		var p plan
		cerr := standaloneState(nil).planFor(&p, "/a.B/C", callOpts)
		switch {
		case wantCall == "" && cerr != nil:
			t.Fatalf("per-call: valid options rejected: %v", cerr)
		case wantCall != "" && (status.Code(cerr) != codes.InvalidArgument || status.Convert(cerr).Message() != wantCall):
			t.Fatalf("per-call: error %v, want %s", cerr, wantCall)
		}
	})
}

func ifs(cond bool, s string) string {
	if cond {
		return s
	}
	return ""
}

// checkValidConfig uses an accepted config's numbers the way the interceptors
// do and checks the results stay in range.
func checkValidConfig(t *testing.T, c *config) {
	t.Helper()
	prev := time.Duration(0)
	for n := 1; n <= 70; n++ {
		cc := &c.call
		cp := backoffCap(cc.initialBackoff, cc.maxBackoff, cc.backoffMultiplier, n)
		if cp <= 0 || cp > cc.maxBackoff || cp < prev {
			t.Fatalf("backoffCap(%v, %v, %v, %d) = %v (previous %v)", cc.initialBackoff, cc.maxBackoff, cc.backoffMultiplier, n, cp, prev)
		}
		prev = cp
		if w := cc.backoff(context.Background(), n); w < 0 || w > cp {
			t.Fatalf("backoff %d = %v, cap %v", n, w, cp)
		}
	}
	// WithRetryBudget bounds the window to 1h: newBudget keeps one bucket per
	// second of it.
	{
		b := newBudget(c.budget)
		for range 3 {
			b.call(nanotime())
			b.allow(extraRetry)
			b.allow(extraHedge)
			b.result(true)
		}
	}
	if c.userTimeout < 0 || c.userTimeout.Milliseconds() > math.MaxInt32 {
		t.Fatalf("user timeout %v accepted", c.userTimeout)
	}
}

// TestBackoffHugeMaxDoesNotPanic is FuzzOptions' crasher
// testdata/fuzz/FuzzOptions/9aa458705ea686f8 through the public API: a valid
// WithBackoff whose cap reaches time.Duration(math.MaxInt64) ("no limit")
// made fullJitter draw from MaxInt64+1, which overflows, and rand.Int64N
// panicked in the caller's goroutine on the first retry.
func TestBackoffHugeMaxDoesNotPanic(t *testing.T) {
	srv := &testsvc.Server{Unary: func(context.Context, string, string) (string, error) {
		return "", status.Error(codes.Unavailable, "always")
	}}
	forever := time.Duration(math.MaxInt64)
	dopts, err := DialOptions(WithBackoff(forever, forever, 1))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, srv), dopts...)
	_, err = testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "x")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want the server's Unavailable at once (the wait outlasts the deadline)", err)
	}
	if n := srv.Calls(); n != 1 {
		t.Errorf("server saw %d attempts, want 1", n)
	}
}

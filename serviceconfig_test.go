package grpcguard

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/serviceconfig"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// These tests cover what WithServiceConfig does with a parsed config: its
// errors, and the plans of calls. internal/serviceconfig tests the parsing
// itself, against grpc-go's own parser.

// echoRetry retries every method of grpc.testing.Echo 4 times.
const echoRetry = `{"methodConfig": [{"name": [{"service": "grpc.testing.Echo"}], "retryPolicy": {
	"maxAttempts": 4, "initialBackoff": ".1s", "maxBackoff": "1s", "backoffMultiplier": 2,
	"retryableStatusCodes": ["UNAVAILABLE"]}}]}`

// An invalid config is the option's error: it wraps ErrInvalidOption and
// names the option, then says what the parser said.
func TestServiceConfigOptionError(t *testing.T) {
	for _, js := range []string{``, `[]`, `{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 1}}]}`} {
		_, perr := serviceconfig.Parse(js)
		_, err := newConfig([]Option{WithServiceConfig(js)})
		if perr == nil || !errors.Is(err, ErrInvalidOption) ||
			err.Error() != "grpcguard: invalid option: WithServiceConfig: "+perr.Error() {
			t.Errorf("%s: option error %v, parser error %v", js, err, perr)
		}
	}
	if !strings.HasSuffix(mustErr(t, WithServiceConfig(`[]`)), "WithServiceConfig: must be a JSON object, got []") {
		t.Error("a config that is not an object does not say so")
	}
}

func mustErr(t *testing.T, o Option) string {
	t.Helper()
	_, err := newConfig([]Option{o})
	if err == nil {
		t.Fatal("accepted")
	}
	return err.Error()
}

// The service config's attempt limit is within the options' own.
func TestServiceConfigMaxAttemptsWithinLimit(t *testing.T) {
	if serviceconfig.MaxAttempts > maxAttemptsLimit {
		t.Fatalf("a service config may ask for %d attempts, the options allow %d", serviceconfig.MaxAttempts, maxAttemptsLimit)
	}
}

// basePlans resolves the plans of a client made with opts: the base plan of
// a method, before any call's options.
func basePlans(t *testing.T, opts ...Option) func(method string) plan {
	t.Helper()
	cs := newClientState(mustConfig(t, opts...), &clientRuntime{})
	return func(method string) plan {
		var p plan
		cs.methods.plan(&p, method, false)
		return p
	}
}

// A method no entry matches, without a default entry, keeps the options'
// plan. (Which entry matches is internal/serviceconfig's Lookup.)
func TestServiceConfigUnmatchedKeepsOptions(t *testing.T) {
	planOf := basePlans(t, WithMaxAttempts(2), WithServiceConfig(`{"methodConfig": [{"name": [{"service": "pkg.Svc"}], "timeout": "1s"}]}`))
	if c := planOf("/pkg.Else/M"); c.callTimeout != 0 || c.maxAttempts != 2 {
		t.Errorf("unmatched method: %+v", c)
	}
	if c := planOf("/pkg.Svc/M"); c.callTimeout != time.Second || c.maxAttempts != 2 {
		t.Errorf("matched entry without a policy: %+v", c)
	}
}

func TestServiceConfigApplied(t *testing.T) {
	js := `{
	  "retryThrottling": {"maxTokens": 20, "tokenRatio": 0.5},
	  "methodConfig": [
		{"name": [{"service": "r"}], "timeout": "2.5s", "retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.2s",
			"maxBackoff": "3s", "backoffMultiplier": 1.5, "retryableStatusCodes": ["UNAVAILABLE", 8, "OK"]}},
		{"name": [{"service": "h"}], "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s", "nonFatalStatusCodes": ["INTERNAL"]}},
		{"name": [{"service": "h0"}], "hedgingPolicy": {"maxAttempts": 2}},
		{"name": [{"service": "t"}], "timeout": "-1s"},
		{"name": [{"service": "z"}], "timeout": "0s"}
	  ]}`
	opts := []Option{
		WithMaxAttempts(7),
		WithBackoff(time.Millisecond, time.Second, 3),
		WithBackoffFunc(func(context.Context, uint) time.Duration { return time.Second }),
		WithRetryableCodes(codes.Aborted),
		WithHedgeDelay(time.Second),
		WithNonFatalCodes(codes.Aborted),
		WithServiceConfig(js),
	}
	cs := newClientState(mustConfig(t, opts...), &clientRuntime{})
	if want := (budgetConfig{maxTokens: 20, tokenRatio: 0.5}); cs.cfg.budget != want {
		t.Errorf("budget %+v, want %+v", cs.cfg.budget, want)
	}
	planOf := func(m string) plan {
		var p plan
		cs.methods.plan(&p, m, false)
		return p
	}
	base := plan{callSettings: cs.cfg.call}

	r := planOf("/r/M")
	want := base
	want.callTimeout = 2500 * time.Millisecond
	want.maxAttempts = 5 // clamped
	want.initialBackoff, want.maxBackoff, want.backoffMultiplier = 200*time.Millisecond, 3*time.Second, 1.5
	want.backoffFunc = nil // the policy's backoff replaces WithBackoffFunc
	want.a6Jitter = true   // and is jittered as gRFC A6 says
	want.retryable = codeSetOf(codes.Unavailable, codes.ResourceExhausted, codes.OK)
	want.idempotent = true
	want.commitAtHeaders = true
	want.hedgeDisabled = true
	assertPlan(t, "retry", r, want)

	h := planOf("/h/M")
	want = base
	want.hedge = true
	want.maxAttempts = 3
	want.hedgeDelay = 50 * time.Millisecond
	want.nonFatal = codeSetOf(codes.Internal)
	want.idempotent = true
	want.retryDisabled = true
	assertPlan(t, "hedge", h, want)

	h0 := planOf("/h0/M")
	want.maxAttempts = 2
	want.hedgeDelay = hedgeAllAtOnce // A6: absent or "0s" sends all attempts at once
	want.nonFatal = 0                // absent: every failure is fatal
	assertPlan(t, "hedge at once", h0, want)

	tm := planOf("/t/M") // negative timeout: ignored, like grpc-go
	assertPlan(t, "negative timeout", tm, base)

	z := planOf("/z/M") // zero timeout: grpc-go fails the call at once
	want = base
	want.callTimeout = time.Nanosecond
	assertPlan(t, "zero timeout", z, want)

	assertPlan(t, "unmatched", planOf("/other/M"), base)
}

func assertPlan(t *testing.T, what string, got, want plan) {
	t.Helper()
	// Functions compare by nil-ness only; the method is not part of the
	// settings.
	if (got.backoffFunc == nil) != (want.backoffFunc == nil) {
		t.Errorf("%s: backoffFunc set=%v, want %v", what, got.backoffFunc != nil, want.backoffFunc != nil)
	}
	got.backoffFunc, want.backoffFunc = nil, nil
	got.method, want.method = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func TestServiceConfigOptionOrder(t *testing.T) {
	throttled := WithServiceConfig(`{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}`)
	c, err := newConfig([]Option{throttled, WithRetryBudget(0.2, 1, time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if c.budget.maxTokens != 0 || c.budget.ratio != 0.2 {
		t.Errorf("a later WithRetryBudget did not win: %+v", c.budget)
	}
	c, err = newConfig([]Option{WithServiceConfig(echoRetry), WithServiceConfig(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if c.serviceConfig != nil {
		t.Errorf("a later WithServiceConfig did not replace the policies")
	}
	c, err = newConfig([]Option{throttled, WithServiceConfig(echoRetry)})
	if err != nil {
		t.Fatal(err)
	}
	if c.budget.maxTokens != 10 {
		t.Errorf("a WithServiceConfig without retryThrottling changed the budget: %+v", c.budget)
	}
}

// TestServiceConfigPlanPerCall: a call's own CallOptions override the
// service config's policy for that call only, and resolving a plan in the
// steady state allocates nothing.
func TestServiceConfigPlanPerCall(t *testing.T) {
	cs := newClientState(mustConfig(t, WithServiceConfig(echoRetry)), &clientRuntime{})
	const m = "/grpc.testing.Echo/Echo"
	var p plan
	if err := cs.planFor(&p, m, []grpc.CallOption{WithPerAttemptTimeout(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if p.perAttemptTimeout != time.Second || p.maxAttempts != 4 || !p.idempotent {
		t.Errorf("per-call plan: %+v", p)
	}
	if err := cs.planFor(&p, m, nil); err != nil || p.perAttemptTimeout != 0 {
		t.Errorf("the next call kept the per-call option: %+v, %v", p, err)
	}
	opts := []grpc.CallOption{WithMaxAttempts(2), grpc.WaitForReady(true)}
	if n := testing.AllocsPerRun(100, func() { cs.planFor(&p, m, opts) }); n != 0 {
		t.Errorf("planFor allocates %v times per call in the steady state", n)
	}
}

// perAttemptRecvTimeout becomes the method's per-attempt timeout: an attempt
// that has not answered in time is cancelled and resent, whatever the
// retryable codes; without the field the options' WithPerAttemptTimeout
// stays, and a call's own WithPerAttemptTimeout overrides it.
func TestServiceConfigPerAttemptRecvTimeout(t *testing.T) {
	js := `{"methodConfig": [
		{"name": [{"service": "grpcguard.testing.Echo"}], "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.001s",
			"maxBackoff": "0.001s", "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"], "perAttemptRecvTimeout": "0.1s"}},
		{"name": [{"service": "other"}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s",
			"maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}]}`
	planOf := basePlans(t, WithPerAttemptTimeout(time.Second), WithServiceConfig(js))
	if p := planOf(testsvc.Echo); p.perAttemptTimeout != 100*time.Millisecond {
		t.Errorf("with perAttemptRecvTimeout: per-attempt timeout %v, want 100ms", p.perAttemptTimeout)
	}
	if p := planOf("/other/M"); p.perAttemptTimeout != time.Second {
		t.Errorf("without it: per-attempt timeout %v, want the options' 1s", p.perAttemptTimeout)
	}

	var calls atomic.Int32
	srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
		if calls.Add(1) == 1 {
			<-ctx.Done() // the first attempt never answers
			return "", ctx.Err()
		}
		return req, nil
	}}
	dopts, err := DialOptions(WithServiceConfig(js))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, srv), dopts...)
	start := time.Now()
	// Echo is not idempotent; the retryPolicy declares it safe to retry.
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "a"); err != nil {
		t.Fatalf("err = %v, want success on the second attempt", err)
	}
	if n, el := calls.Load(), time.Since(start); n != 2 || el < 100*time.Millisecond || el > 2*time.Second {
		t.Errorf("server saw %d attempts in %v, want 2, the first cut after 100ms", n, el)
	}
}

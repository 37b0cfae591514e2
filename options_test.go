package grpcguard

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// invalidOptionCases lists every invalid value of every validating option
// with its exact error text: what a user reads when they get it wrong.
var invalidOptionCases = []struct {
	opt  Option
	want string
}{
	{WithProbeAfterIdle(-time.Nanosecond), "grpcguard: invalid option: WithProbeAfterIdle(-1ns): must not be negative"},
	{WithProbeAfterIdle(-time.Second), "grpcguard: invalid option: WithProbeAfterIdle(-1s): must not be negative"},
	{WithSweepInterval(-time.Millisecond), "grpcguard: invalid option: WithSweepInterval(-1ms): must not be negative"},

	{WithKeepAlive(-time.Second, time.Second, 3), "grpcguard: invalid option: WithKeepAlive(-1s): idle must not be negative"},
	{WithKeepAlive(time.Second, 0, 3), "grpcguard: invalid option: WithKeepAlive(0s): interval must be positive"},
	{WithKeepAlive(time.Second, -time.Second, 3), "grpcguard: invalid option: WithKeepAlive(-1s): interval must be positive"},
	{WithKeepAlive(time.Second, time.Second, 0), "grpcguard: invalid option: WithKeepAlive(0): count must be positive"},
	{WithKeepAlive(time.Second, time.Second, -2), "grpcguard: invalid option: WithKeepAlive(-2): count must be positive"},

	{WithUserTimeout(-time.Second), "grpcguard: invalid option: WithUserTimeout(-1s): must not be negative"},
	{WithUserTimeout(math.MaxInt32*time.Millisecond + 1), "grpcguard: invalid option: WithUserTimeout(596h31m23.647000001s): must fit in 32-bit milliseconds"},

	{WithMaxAttempts(0), "grpcguard: invalid option: WithMaxAttempts(0): must be between 1 and 10"},
	{WithMaxAttempts(-1), "grpcguard: invalid option: WithMaxAttempts(-1): must be between 1 and 10"},
	{WithMaxAttempts(11), "grpcguard: invalid option: WithMaxAttempts(11): must be between 1 and 10"},

	{WithRetryableCodes(codes.OK), "grpcguard: invalid option: WithRetryableCodes(OK): must be a non-OK gRPC status code"},
	{WithRetryableCodes(codes.Unavailable, codes.Code(17)), "grpcguard: invalid option: WithRetryableCodes(Code(17)): must be a non-OK gRPC status code"},
	{WithRetryableCodes(codes.Code(1 << 31)), "grpcguard: invalid option: WithRetryableCodes(Code(2147483648)): must be a non-OK gRPC status code"},

	{WithIdempotentMethods(""), `grpcguard: invalid option: WithIdempotentMethods(""): must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`},
	{WithIdempotentMethods("pkg.Svc/M"), `grpcguard: invalid option: WithIdempotentMethods("pkg.Svc/M"): must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`},
	{WithIdempotentMethods("/pkg.Svc"), `grpcguard: invalid option: WithIdempotentMethods("/pkg.Svc"): must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`},
	{WithIdempotentMethods("/pkg.Svc/"), `grpcguard: invalid option: WithIdempotentMethods("/pkg.Svc/"): must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`},
	{WithIdempotentMethods("//M"), `grpcguard: invalid option: WithIdempotentMethods("//M"): must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`},
	{WithIdempotentMethods("/a.B/C/D"), `grpcguard: invalid option: WithIdempotentMethods("/a.B/C/D"): must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`},
	{WithIdempotentMethods("/a.B/C", "bad"), `grpcguard: invalid option: WithIdempotentMethods("bad"): must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`},

	{WithBackoff(0, time.Second, 2), "grpcguard: invalid option: WithBackoff(0s): initial must be positive"},
	{WithBackoff(-time.Millisecond, time.Second, 2), "grpcguard: invalid option: WithBackoff(-1ms): initial must be positive"},
	{WithBackoff(time.Second, time.Millisecond, 2), "grpcguard: invalid option: WithBackoff(1ms): max must be at least initial"},
	{WithBackoff(time.Millisecond, time.Second, 0.5), "grpcguard: invalid option: WithBackoff(0.5): multiplier must be a finite number >= 1"},
	{WithBackoff(time.Millisecond, time.Second, math.NaN()), "grpcguard: invalid option: WithBackoff(NaN): multiplier must be a finite number >= 1"},
	{WithBackoff(time.Millisecond, time.Second, math.Inf(1)), "grpcguard: invalid option: WithBackoff(+Inf): multiplier must be a finite number >= 1"},
	{WithBackoffFunc(nil), "grpcguard: invalid option: WithBackoffFunc(nil): must not be nil"},

	{WithPerAttemptTimeout(-time.Millisecond), "grpcguard: invalid option: WithPerAttemptTimeout(-1ms): must not be negative"},
	{WithRetryBufferSize(-1), "grpcguard: invalid option: WithRetryBufferSize(-1): must not be negative"},

	{WithRetryBudget(-0.1, 10, 10*time.Second), "grpcguard: invalid option: WithRetryBudget(-0.1): ratio must be in [0, 1]"},
	{WithRetryBudget(1.5, 10, 10*time.Second), "grpcguard: invalid option: WithRetryBudget(1.5): ratio must be in [0, 1]"},
	{WithRetryBudget(math.NaN(), 10, 10*time.Second), "grpcguard: invalid option: WithRetryBudget(NaN): ratio must be in [0, 1]"},
	{WithRetryBudget(0.1, -1, 10*time.Second), "grpcguard: invalid option: WithRetryBudget(-1): minPerSecond must be a finite number >= 0"},
	{WithRetryBudget(0.1, math.Inf(1), 10*time.Second), "grpcguard: invalid option: WithRetryBudget(+Inf): minPerSecond must be a finite number >= 0"},
	{WithRetryBudget(0.1, math.NaN(), 10*time.Second), "grpcguard: invalid option: WithRetryBudget(NaN): minPerSecond must be a finite number >= 0"},
	{WithRetryBudget(0.1, 10, time.Second-1), "grpcguard: invalid option: WithRetryBudget(999.999999ms): window must be between 1s and 1h"},
	{WithRetryBudget(0.1, 10, time.Hour+1), "grpcguard: invalid option: WithRetryBudget(1h0m0.000000001s): window must be between 1s and 1h"},
	{WithKeepAlive(32768*time.Second, time.Second, 3), "grpcguard: invalid option: WithKeepAlive(9h6m8s): idle must be at most 32767s"},
	{WithKeepAlive(time.Second, 32768*time.Second, 3), "grpcguard: invalid option: WithKeepAlive(9h6m8s): interval must be at most 32767s"},
	{WithKeepAlive(time.Second, time.Second, 128), "grpcguard: invalid option: WithKeepAlive(128): count must be at most 127"},
	{WithRetryBudget(0.1, 10, 0), "grpcguard: invalid option: WithRetryBudget(0s): window must be between 1s and 1h"},

	{WithRetryThrottling(0, 0.1), "grpcguard: invalid option: WithRetryThrottling(0): maxTokens must be in (0, 1000]"},
	{WithRetryThrottling(1000.5, 0.1), "grpcguard: invalid option: WithRetryThrottling(1000.5): maxTokens must be in (0, 1000]"},
	{WithRetryThrottling(math.NaN(), 0.1), "grpcguard: invalid option: WithRetryThrottling(NaN): maxTokens must be in (0, 1000]"},
	{WithRetryThrottling(10, 0), "grpcguard: invalid option: WithRetryThrottling(0): tokenRatio must be in (0, 1000]"},
	{WithRetryThrottling(10, -1), "grpcguard: invalid option: WithRetryThrottling(-1): tokenRatio must be in (0, 1000]"},
	{WithRetryThrottling(10, math.Inf(1)), "grpcguard: invalid option: WithRetryThrottling(+Inf): tokenRatio must be in (0, 1000]"},

	{WithHedgeDelay(-time.Millisecond), "grpcguard: invalid option: WithHedgeDelay(-1ms): must not be negative"},
	{WithAdaptiveHedgeDelay(0, time.Millisecond, time.Second), "grpcguard: invalid option: WithAdaptiveHedgeDelay(0): quantile must be in (0, 1)"},
	{WithAdaptiveHedgeDelay(1, time.Millisecond, time.Second), "grpcguard: invalid option: WithAdaptiveHedgeDelay(1): quantile must be in (0, 1)"},
	{WithAdaptiveHedgeDelay(math.NaN(), time.Millisecond, time.Second), "grpcguard: invalid option: WithAdaptiveHedgeDelay(NaN): quantile must be in (0, 1)"},
	{WithAdaptiveHedgeDelay(0.9, 0, time.Second), "grpcguard: invalid option: WithAdaptiveHedgeDelay(0s): min must be positive"},
	{WithAdaptiveHedgeDelay(0.9, time.Second, time.Millisecond), "grpcguard: invalid option: WithAdaptiveHedgeDelay(1ms): max must be at least min"},
	{WithNonFatalCodes(codes.OK), "grpcguard: invalid option: WithNonFatalCodes(OK): must be a non-OK gRPC status code"},
	{WithNonFatalCodes(codes.Code(99)), "grpcguard: invalid option: WithNonFatalCodes(Code(99)): must be a non-OK gRPC status code"},
	{WithHedgeBudget(-0.5), "grpcguard: invalid option: WithHedgeBudget(-0.5): ratio must be in [0, 1]"},
	{WithHedgeBudget(1.01), "grpcguard: invalid option: WithHedgeBudget(1.01): ratio must be in [0, 1]"},
	{WithHedgeBudget(math.NaN()), "grpcguard: invalid option: WithHedgeBudget(NaN): ratio must be in [0, 1]"},

	{WithServiceConfig(`{`), "grpcguard: invalid option: WithServiceConfig: malformed JSON at offset 1: unexpected end of JSON input"},
	{WithServiceConfig(`{"methodConfig":[{"name":[{"service":"a.B"}],"retryPolicy":{"maxAttempts":1}}]}`),
		"grpcguard: invalid option: WithServiceConfig: methodConfig[0].retryPolicy.maxAttempts: must be greater than 1, got 1"},
}

func TestOptionErrors(t *testing.T) {
	for _, tc := range invalidOptionCases {
		_, err := newConfig([]Option{tc.opt})
		if err == nil {
			t.Errorf("accepted; want %s", tc.want)
			continue
		}
		if !errors.Is(err, ErrInvalidOption) {
			t.Errorf("%v: does not wrap ErrInvalidOption", err)
		}
		if err.Error() != tc.want {
			t.Errorf("error:\n got %s\nwant %s", err, tc.want)
		}
	}
}

// TestOptionBoundsAccepted: the documented limits themselves are valid.
func TestOptionBoundsAccepted(t *testing.T) {
	for i, o := range []Option{
		WithProbeAfterIdle(0), WithSweepInterval(0),
		WithKeepAlive(0, -1, -1), // idle 0 turns keepalive off; the rest is unused
		WithKeepAlive(time.Nanosecond, time.Nanosecond, 1),
		WithUserTimeout(0), WithUserTimeout(math.MaxInt32 * time.Millisecond),
		WithMaxAttempts(1), WithMaxAttempts(10),
		WithRetryableCodes(), WithRetryableCodes(codes.Canceled, codes.Unauthenticated),
		WithIdempotentMethods(), WithIdempotentMethods("/a.B/C", "/a.B/*"),
		WithBackoff(1, 1, 1), WithBackoff(time.Millisecond, time.Hour, math.MaxFloat64),
		WithBackoffFunc(func(context.Context, uint) time.Duration { return 0 }),
		WithPerAttemptTimeout(0), WithRetryBufferSize(0),
		WithRetryBudget(0, 0, time.Second), WithRetryBudget(1, math.MaxFloat64, time.Hour),
		WithRetryThrottling(math.SmallestNonzeroFloat64, 1000), WithRetryThrottling(1000, math.SmallestNonzeroFloat64),
		WithHedgeDelay(0), WithAdaptiveHedgeDelay(math.SmallestNonzeroFloat64, 1, 1), WithAdaptiveHedgeDelay(math.Nextafter(1, 0), 1, time.Hour),
		WithNonFatalCodes(), WithNonFatalCodes(codes.Unauthenticated),
		WithHedgeBudget(0), WithHedgeBudget(1),
		WithMetrics(nil), WithRetryDisabled(), WithHedgingDisabled(), WithServiceConfig(`{}`),
		nil, CallOption{}, ClientOption{}, // nil and the zero options do nothing
	} {
		if _, err := newConfig([]Option{o}); err != nil {
			t.Errorf("option %d: %v", i, err)
		}
	}
}

// TestOptionErrorsJoined: every invalid option is reported, in order, so a
// user fixes them all at once; the valid ones among them do not matter.
func TestOptionErrorsJoined(t *testing.T) {
	_, err := newConfig([]Option{WithMaxAttempts(0), WithHedgeDelay(time.Millisecond), WithHedgeBudget(2), WithBackoffFunc(nil)})
	want := "grpcguard: invalid option: WithMaxAttempts(0): must be between 1 and 10\n" +
		"grpcguard: invalid option: WithHedgeBudget(2): ratio must be in [0, 1]\n" +
		"grpcguard: invalid option: WithBackoffFunc(nil): must not be nil"
	if err == nil || err.Error() != want || !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

// TestOptionInvalidEverywhere: every constructor given an invalid option
// reports it (DialOptions, NewDialer's dials) or fails every call with
// InvalidArgument and the option's text (the interceptors), and nothing
// reaches the server; none panics.
func TestOptionInvalidEverywhere(t *testing.T) {
	srv := &testsvc.Server{}
	addr := startServer(t, srv)
	for _, tc := range invalidOptionCases {
		t.Run("", func(t *testing.T) {
			opts := []Option{WithMetrics(NewMetrics()), tc.opt}
			if _, err := DialOptions(opts...); err == nil || err.Error() != tc.want {
				t.Errorf("DialOptions: %v, want %s", err, tc.want)
			}
			d := NewDialer(opts...)
			defer d.Close()
			if _, err := d.DialContext(context.Background(), addr); err == nil || err.Error() != tc.want || !errors.Is(err, ErrInvalidOption) {
				t.Errorf("DialContext: %v, want %s", err, tc.want)
			}
			ctx := context.Background()
			invoked := false
			invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
				invoked = true
				return nil
			}
			streamer := func(context.Context, *grpc.StreamDesc, *grpc.ClientConn, string, ...grpc.CallOption) (grpc.ClientStream, error) {
				invoked = true
				return nil, nil
			}
			checkInvalidArgument(t, "UnaryClientRetry", UnaryClientRetry(opts...)(ctx, testsvc.Get, nil, nil, nil, invoker), tc.want)
			_, err := StreamClientRetry(opts...)(ctx, testsvc.WatchDesc, nil, testsvc.Watch, streamer)
			checkInvalidArgument(t, "StreamClientRetry", err, tc.want)
			checkInvalidArgument(t, "UnaryClientHedge", UnaryClientHedge(opts...)(ctx, testsvc.Get, nil, nil, nil, invoker), tc.want)
			if invoked {
				t.Error("an interceptor with invalid options sent the call")
			}
		})
	}
	if n := srv.Calls(); n != 0 {
		t.Errorf("server saw %d calls", n)
	}
}

func checkInvalidArgument(t *testing.T, who string, err error, want string) {
	t.Helper()
	if s, _ := status.FromError(err); s.Code() != codes.InvalidArgument || s.Message() != want {
		t.Errorf("%s: %v, want InvalidArgument: %s", who, err, want)
	}
}

// TestOptionInvalidPerCall: an invalid grpcguard option given to one call,
// through a real client with DialOptions, fails that call with
// InvalidArgument and its text before anything is sent, and the next call
// is unaffected. (A ClientOption cannot be given to a call: see
// TestOptionScopes.)
func TestOptionInvalidPerCall(t *testing.T) {
	srv := &testsvc.Server{}
	addr := startServer(t, srv)
	dopts, err := DialOptions(WithHedgeDelay(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, addr, dopts...)
	ctx := ctxTimeout(t, 5*time.Second)
	for _, tc := range []struct {
		opt  CallOption
		want string
	}{
		{WithMaxAttempts(11), "grpcguard: invalid option: WithMaxAttempts(11): must be between 1 and 10"},
		{WithPerAttemptTimeout(-1), "grpcguard: invalid option: WithPerAttemptTimeout(-1ns): must not be negative"},
		{WithHedgeDelay(-1), "grpcguard: invalid option: WithHedgeDelay(-1ns): must not be negative"},
		{WithBackoff(0, 0, 0), "grpcguard: invalid option: WithBackoff(0s): initial must be positive"},
	} {
		for _, method := range []string{testsvc.Echo, testsvc.Get} { // Get is hedged, Echo only retried
			_, err := testsvc.Call(ctx, cc, method, "x", tc.opt)
			checkInvalidArgument(t, method, err, tc.want)
		}
		s, err := cc.NewStream(ctx, testsvc.WatchDesc, testsvc.Watch, tc.opt)
		if err == nil {
			err = s.SendMsg(nil) // not reached when the option is refused
		}
		checkInvalidArgument(t, "stream", err, tc.want)
	}
	if n := srv.Calls(); n != 0 {
		t.Errorf("server saw %d calls, want 0", n)
	}
	if _, err := testsvc.Call(ctx, cc, testsvc.Get, "ok"); err != nil {
		t.Errorf("next call: %v", err)
	}
}

// TestOptionKeepAliveDisabledByZeroIdle: idle 0 turns TCP keepalive off,
// whatever interval and count say.
func TestOptionKeepAliveDisabledByZeroIdle(t *testing.T) {
	cfg, err := newConfig([]Option{WithKeepAlive(0, -1, -1)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.keepAliveIdle != 0 {
		t.Fatalf("keepAliveIdle = %v", cfg.keepAliveIdle)
	}
	if d := NewDialer(WithKeepAlive(0, -1, -1)); d.router.Net.KeepAlive >= 0 || d.router.Net.KeepAliveConfig.Enable {
		t.Fatalf("keepalive still on: %+v %+v", d.router.Net.KeepAlive, d.router.Net.KeepAliveConfig)
	}
}

// mustConfig parses opts as a constructor does, failing the test on an
// invalid one.
func mustConfig(t testing.TB, opts ...Option) config {
	t.Helper()
	cfg, err := newConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// countingOption counts how often it is applied, and fails with err.
type countingOption struct {
	applied *int
	err     error
}

func (o countingOption) applyConfig(*config) error {
	*o.applied++
	return o.err
}

// Every constructor applies each option exactly once: DialOptions resolves
// its options into one config and hands it, with the client's runtime
// state, to its Dialer, its interceptors and its request ids (issue 19).
func TestOptionsAppliedOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func(...Option) error
	}{
		{"DialOptions", func(o ...Option) error { _, err := DialOptions(o...); return err }},
		{"NewDialer", func(o ...Option) error {
			d := NewDialer(o...)
			defer d.Close()
			_, err := d.DialContext(context.Background(), "") // fails without dialing: d.err or the address
			return err
		}},
		{"UnaryClientRetry", func(o ...Option) error {
			return UnaryClientRetry(o...)(context.Background(), "/p.S/M", nil, nil, nil, okInvoker)
		}},
		{"StreamClientRetry", func(o ...Option) error {
			_, err := StreamClientRetry(o...)(context.Background(), &grpc.StreamDesc{}, nil, "/p.S/M", okStreamer)
			return err
		}},
		{"UnaryClientHedge", func(o ...Option) error {
			return UnaryClientHedge(o...)(context.Background(), "/p.S/M", nil, nil, nil, okInvoker)
		}},
	} {
		var n int
		if err := tc.build(countingOption{applied: &n}); tc.name != "NewDialer" && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if n != 1 {
			t.Errorf("%s applied a valid option %d times, want 1", tc.name, n)
		}
		// An invalid option is applied once too, and reported.
		n = 0
		boom := errors.New("boom")
		if err := tc.build(countingOption{applied: &n, err: boom}); !errors.Is(err, boom) && status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s with an invalid option: %v, want it reported", tc.name, err)
		}
		if n != 1 {
			t.Errorf("%s applied an invalid option %d times, want 1", tc.name, n)
		}
	}
}

func okInvoker(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
	return nil
}

func okStreamer(context.Context, *grpc.StreamDesc, *grpc.ClientConn, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, nil
}

package grpcguard

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"github.com/grpcguard/grpcguard/internal/avoidtried"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// ErrInvalidOption is wrapped by every error that reports an invalid option
// value. The message names the option and the value.
var ErrInvalidOption = errors.New("grpcguard: invalid option")

// Option configures grpcguard. Every constructor (NewDialer,
// UnaryClientRetry, StreamClientRetry, UnaryClientHedge, DialOptions) accepts
// every Option and ignores what does not concern it, so one list configures a
// whole client:
//
//	opts := []grpcguard.Option{grpcguard.WithMetrics(m), grpcguard.WithMaxAttempts(4)}
//
// An Option is one of two kinds, told apart by the compiler:
//
//   - a CallOption (attempts, retry or hedging off, per-attempt timeout,
//     hedge delay, codes, backoff, replay buffer) applies to every call when
//     given to a constructor, and to one call when given to that call: it is
//     also a grpc.CallOption;
//   - a ClientOption (the Dialer's settings, keepalive, metrics, idempotent
//     methods, budgets, throttling, the adaptive delay's estimator, the
//     service config) is about the whole client, and is not a
//     grpc.CallOption: passing one to a call does not compile.
type Option interface {
	applyConfig(*config) error
}

// CallOption is an Option that also applies to a single call: pass it to
// the call, and it overrides the client's setting for that call only, for
// example client.Get(ctx, req, grpcguard.WithMaxAttempts(1)). An invalid one
// fails that call with InvalidArgument before anything is sent. The zero
// CallOption does nothing.
type CallOption struct {
	grpc.EmptyCallOption
	// apply takes and returns the settings by value, so that a call's
	// plan, which it changes, stays on the call's stack.
	apply func(callSettings) (callSettings, error)
}

func (o CallOption) applyConfig(c *config) error {
	if o.apply == nil {
		return nil
	}
	var err error
	c.call, err = o.apply(c.call)
	return err
}

// ClientOption is an Option that applies to a whole client: it configures
// the Dialer, the state the interceptors share (budget, metrics, idempotent
// methods, adaptive delay) or the service config. It is deliberately not a
// grpc.CallOption. The zero ClientOption does nothing.
type ClientOption struct {
	apply func(*config) error
}

func (o ClientOption) applyConfig(c *config) error {
	if o.apply == nil {
		return nil
	}
	return o.apply(c)
}

// Defaults. Each is documented on the option that changes it.
const (
	DefaultProbeAfterIdle    = 100 * time.Millisecond
	DefaultVerifyAfterIdle   = 1 * time.Second
	DefaultKeepAliveIdle     = 15 * time.Second
	DefaultKeepAliveInterval = 5 * time.Second
	DefaultKeepAliveCount    = 3
	DefaultUserTimeout       = 20 * time.Second

	DefaultMaxAttempts       = 3
	DefaultInitialBackoff    = 50 * time.Millisecond
	DefaultMaxBackoff        = 5 * time.Second
	DefaultBackoffMultiplier = 2.0
	DefaultRetryBufferBytes  = 256 << 10

	DefaultBudgetRatio        = 0.2
	DefaultBudgetMinPerSecond = 10
	DefaultBudgetWindow       = 10 * time.Second
	DefaultHedgeBudgetRatio   = 0.1

	DefaultHedgeQuantile = 0.95
	DefaultHedgeMinDelay = 5 * time.Millisecond
	DefaultHedgeMaxDelay = 1 * time.Second
)

// The kernel's limits for TCP keepalive (Linux: TCP_KEEPIDLE and
// TCP_KEEPINTVL at most 32767 s, TCP_KEEPCNT at most 127); beyond them it
// refuses the setting and the OS default silently stays.
const (
	maxKeepAliveTime  = 32767 * time.Second
	maxKeepAliveCount = 127
)

// learnHorizon is config.maxIdle when the idle horizon is learned (the
// default).
const learnHorizon time.Duration = -1

// maxAttemptsLimit bounds WithMaxAttempts: gRFC A6 clamps to 5 by default;
// we allow more for users who ask, but not an unbounded number.
const maxAttemptsLimit = 10

// config is the resolved settings of a client: what ClientOptions set, and
// the defaults of every call (call), which CallOptions set. Each exported
// constructor makes it once (newConfig) and hands it to the parts it builds;
// it is not changed afterwards, and holds no state that running the client
// changes: that is clientRuntime's (bundle.go). What it points to is
// immutable too (method sets, the service config), or is the user's own
// (metrics: where to report, as WithMetrics chose).
type config struct {
	// Dialer.
	probeAfterIdle    time.Duration
	sweepInterval     time.Duration
	keepAliveIdle     time.Duration
	keepAliveInterval time.Duration
	keepAliveCount    int
	userTimeout       time.Duration
	metrics           *Metrics
	// verifyAfterIdle: the path check runs before the first write after this
	// much idle; 0 turns it off.
	verifyAfterIdle time.Duration
	// maxIdle: learnHorizon (< 0) learns the idle horizon, 0 never retires,
	// a positive value retires conns idle that long.
	maxIdle time.Duration

	// call holds the defaults of every call; a call's own CallOptions
	// override them in its plan.
	call callSettings

	idempotent *methodSet
	budget     budgetConfig

	// The adaptive hedge delay's estimator, per client.
	hedgeQuantile float64
	hedgeMinDelay time.Duration
	hedgeMaxDelay time.Duration

	// Per-method policies from a gRFC A6 service config; nil when none.
	serviceConfig *serviceConfig

	// How the Dialer obtains its sockets (options_dial.go, internal/dialroute).
	dialFunc dialFunc // WithDialFunc; nil: the Dialer dials
	noProxy  bool     // WithNoProxy

	// Request ids and server deduplication (issue 11; options_dedup.go).
	requestIDsOff bool         // WithRequestIDs(false)
	requestIDsAll bool         // WithRequestIDs(true): an id on every call
	serverDedup   *methodSet   // WithServerDedup: declared by hand
	dedupStatus   *DedupStatus // WithDedupStatus: what DialOptions learns into; nil: its own

	hooks Hooks // WithHooks

	// avoidTried: each call carries a tried set for the
	// grpcguard_avoid_tried_backends policy (WithAvoidTriedBackends).
	avoidTried bool
}

// callSettings are the settings a CallOption changes: per client as
// defaults, per call in its plan.
type callSettings struct {
	maxAttempts       int
	retryDisabled     bool
	hedgeDisabled     bool
	perAttemptTimeout time.Duration
	// hedge: a hedge delay was asked for (WithHedgeDelay, a hedgingPolicy),
	// so the call is hedged if its method may run twice. hedgeDelay 0 is
	// the adaptive delay.
	hedge             bool
	hedgeDelay        time.Duration
	retryable         codeSet
	nonFatal          codeSet
	initialBackoff    time.Duration
	maxBackoff        time.Duration
	backoffMultiplier float64
	backoffFunc       retry.BackoffFunc
	// a6Jitter: the backoff comes from a service config's retryPolicy and
	// is jittered as amended gRFC A6 says (±20%); otherwise full jitter.
	a6Jitter         bool
	retryBufferBytes int
}

// budgetConfig selects and sizes the budget of extra attempts.
type budgetConfig struct {
	ratio        float64
	minPerSecond float64
	window       time.Duration
	// hedgeRatio bounds the part of the budget that attempts started by the
	// hedge delay may take.
	hedgeRatio float64
	// tokenBucket, when maxTokens > 0, replaces the ratio budget with gRFC A6
	// retry throttling.
	maxTokens  float64
	tokenRatio float64
}

func defaultConfig() config {
	return config{
		probeAfterIdle:    DefaultProbeAfterIdle,
		verifyAfterIdle:   DefaultVerifyAfterIdle,
		maxIdle:           learnHorizon,
		keepAliveIdle:     DefaultKeepAliveIdle,
		keepAliveInterval: DefaultKeepAliveInterval,
		keepAliveCount:    DefaultKeepAliveCount,
		userTimeout:       DefaultUserTimeout,

		call: callSettings{
			maxAttempts:       DefaultMaxAttempts,
			retryable:         codeSetOf(codes.Unavailable),
			nonFatal:          codeSetOf(codes.Unavailable),
			initialBackoff:    DefaultInitialBackoff,
			maxBackoff:        DefaultMaxBackoff,
			backoffMultiplier: DefaultBackoffMultiplier,
			retryBufferBytes:  DefaultRetryBufferBytes,
		},
		idempotent: &methodSet{},
		budget: budgetConfig{
			ratio:        DefaultBudgetRatio,
			minPerSecond: DefaultBudgetMinPerSecond,
			window:       DefaultBudgetWindow,
			hedgeRatio:   DefaultHedgeBudgetRatio,
		},

		hedgeQuantile: DefaultHedgeQuantile,
		hedgeMinDelay: DefaultHedgeMinDelay,
		hedgeMaxDelay: DefaultHedgeMaxDelay,
	}
}

// newConfig applies opts over the defaults. It returns every invalid option,
// joined, so a user fixes them all at once. nil Options are skipped.
func newConfig(opts []Option) (config, error) {
	c := defaultConfig()
	var errs []error
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o.applyConfig(&c); err != nil {
			errs = append(errs, err)
		}
	}
	return c, errors.Join(errs...)
}

func invalid(option string, value any, reason string) error {
	return fmt.Errorf("%w: %s(%v): %s", ErrInvalidOption, option, value, reason)
}

func clientOption(f func(*config) error) ClientOption { return ClientOption{apply: f} }

func callOption(f func(callSettings) (callSettings, error)) CallOption {
	return CallOption{apply: f}
}

// WithProbeAfterIdle sets how long a connection must have been idle (no read
// or write completed) before it is probed: by the interceptors before an RPC
// picks a transport, and by the connection itself before its next Write.
//
// The default, 100ms, probes only connections that something could have closed
// for idleness: load balancers, NATs and proxies time out idle connections
// after seconds to hours, so 100ms catches every such close with a wide margin,
// while a busy connection is never probed and a quiet one at most ten times a
// second (a probe is one non-blocking recv syscall). 0 probes before every RPC and
// every Write. A negative value is invalid.
func WithProbeAfterIdle(d time.Duration) ClientOption {
	return clientOption(func(c *config) error {
		if d < 0 {
			return invalid("WithProbeAfterIdle", d, "must not be negative")
		}
		c.probeAfterIdle = d
		return nil
	})
}

// WithVerifyAfterIdle sets how long the path of a TCP connection must have
// been silent (no packet received, keepalive ACKs included) before its next
// write waits for a round trip that proves the path still knows the
// connection (Linux; see the package documentation). A NAT, load balancer or
// stateful firewall that forgot an idle flow answers it with RST: the
// connection is then closed, the write refused with nothing sent, and the
// call resent at once on a fresh connection, whatever its method.
//
// The check runs only while the answer is unknown: once the Dialer has seen
// its path answer after a longer silence (a check, a reply to a write after
// idle, a keepalive ACK), writes after shorter silences go without it, for
// the price of one TCP_INFO read. A reset forgets what was seen.
//
// The default, 1s, is the shortest idle at which the kernel sends the probe at
// once (TCP_KEEPIDLE counts whole seconds, at least one), and below any idle
// timeout a middlebox uses. A check costs the time to the kernel's next timer
// tick plus one round trip. A busy connection is never checked. 0 turns the
// check off; otherwise d must be at least 1s.
func WithVerifyAfterIdle(d time.Duration) ClientOption {
	return clientOption(func(c *config) error {
		if d < 0 || (d > 0 && d < time.Second) {
			return invalid("WithVerifyAfterIdle", d, "must be 0 (off) or at least 1s")
		}
		c.verifyAfterIdle = d
		return nil
	})
}

// WithMaxIdle sets the idle horizon by hand: a connection idle for d that
// carries no RPC is retired before a call can pick it (closed and redialed),
// as net/http's Transport.IdleConnTimeout and database/sql's
// SetConnMaxIdleTime do. Set it just under the idle timeout of the load
// balancer, NAT or proxy on the path.
//
// Without this option the horizon is learned: once two connections died at
// idle ages that agree within a factor of two, each Dialer retires its idle
// connections at 80% of the younger (see the package documentation); until
// then nothing is retired. Retirement needs the Dialer's interceptors (as
// DialOptions installs them), which tell it that no RPC is in flight. d = 0
// turns retirement off; a negative d is invalid.
func WithMaxIdle(d time.Duration) ClientOption {
	return clientOption(func(c *config) error {
		if d < 0 {
			return invalid("WithMaxIdle", d, "must not be negative")
		}
		c.maxIdle = d
		return nil
	})
}

// WithSweepInterval starts, for each Dialer, one background goroutine that
// every d probes the connections idle at least the probe-after-idle time and
// closes the stale ones, so that grpc redials before the next RPC needs the
// connection. Off (0) by default: the probe before the pick already covers
// RPCs; the sweep also frees sockets and reports stale connections on clients
// that rarely call. Dialer.Close stops it. A negative value is invalid.
func WithSweepInterval(d time.Duration) ClientOption {
	return clientOption(func(c *config) error {
		if d < 0 {
			return invalid("WithSweepInterval", d, "must not be negative")
		}
		c.sweepInterval = d
		return nil
	})
}

// WithKeepAlive sets TCP keepalive on every TCP connection the Dialer makes:
// the first probe after idle of quiet time, then one every interval, and the
// connection is dropped after count unanswered probes. The defaults, 15s, 5s
// and 3, give up on a silent peer of an idle connection after 30s; with the
// default TCP_USER_TIMEOUT, which also bounds unanswered probes, after 20s.
// Valid: idle and interval up to 32767s, count up to 127 (the kernel's limits).
// TCP keepalive is answered by the peer's kernel, so unlike HTTP/2 keepalive
// pings it never trips a server's too_many_pings enforcement, and NATs and
// load balancers reset their idle timers on it. After a connection is reset
// (or goes silent) after idle, the Dialer shortens idle on all its
// connections to half the idle at which it died, at least 1s, for an hour
// (Linux). idle = 0 disables TCP keepalive, and that; otherwise every value
// must be positive.
func WithKeepAlive(idle, interval time.Duration, count int) ClientOption {
	return clientOption(func(c *config) error {
		switch {
		case idle < 0:
			return invalid("WithKeepAlive", idle, "idle must not be negative")
		case idle > 0 && interval <= 0:
			return invalid("WithKeepAlive", interval, "interval must be positive")
		case idle > 0 && count <= 0:
			return invalid("WithKeepAlive", count, "count must be positive")
		case idle > maxKeepAliveTime:
			return invalid("WithKeepAlive", idle, "idle must be at most 32767s")
		case idle > 0 && interval > maxKeepAliveTime:
			return invalid("WithKeepAlive", interval, "interval must be at most 32767s")
		case idle > 0 && count > maxKeepAliveCount:
			return invalid("WithKeepAlive", count, "count must be at most 127")
		}
		c.keepAliveIdle, c.keepAliveInterval, c.keepAliveCount = idle, interval, count
		return nil
	})
}

// WithUserTimeout sets TCP_USER_TIMEOUT (Linux): a connection whose sent data
// stays unacknowledged this long is dropped with ETIMEDOUT instead of
// retransmitting for the kernel's default of about 15 minutes. The default,
// 20s, equals grpc-go's default keepalive timeout, which grpc would set itself
// on an unwrapped connection when keepalive is on; through a blackhole a call
// in flight then fails with Unavailable after about that long (TestBlackhole).
// 0 leaves the
// kernel default. The value is rounded up to whole milliseconds and may be at
// most 2^31-1 ms (about 24 days); a negative value is invalid. Ignored on
// other platforms.
func WithUserTimeout(d time.Duration) ClientOption {
	return clientOption(func(c *config) error {
		if d < 0 {
			return invalid("WithUserTimeout", d, "must not be negative")
		}
		if d > math.MaxInt32*time.Millisecond {
			return invalid("WithUserTimeout", d, "must fit in 32-bit milliseconds")
		}
		c.userTimeout = d
		return nil
	})
}

// WithMetrics reports to m. Without it nothing is counted and nothing costs.
// The same Metrics may be shared by a Dialer and interceptors.
func WithMetrics(m *Metrics) ClientOption {
	return clientOption(func(c *config) error {
		c.metrics = m
		return nil
	})
}

// WithIdempotentMethods declares methods safe to run more than once, so that
// they may be retried after the request may have reached the server and may
// be hedged. Names are full method names, "/pkg.Service/Method", or a whole
// service, "/pkg.Service/*". Methods whose protobuf descriptor declares
// idempotency_level IDEMPOTENT or NO_SIDE_EFFECTS need not be listed. Repeated
// uses add up. A method listed by its full name is known to the client and
// keeps its own metric labels; the methods of a "/pkg.Service/*" are not,
// unless known otherwise (see Metrics).
func WithIdempotentMethods(methods ...string) ClientOption {
	return clientOption(func(c *config) error {
		set := c.idempotent.clone()
		for _, m := range methods {
			if err := set.add(m); err != nil {
				return invalid("WithIdempotentMethods", fmt.Sprintf("%q", m), err.Error())
			}
		}
		c.idempotent = set
		return nil
	})
}

// WithMaxAttempts sets the maximum number of attempts of one call, including
// the original: for retry, attempts in sequence; for hedging, attempts that
// may be in flight at once. Default 3, the SRE book's advice. Valid range 1
// to 10; 1 turns retrying and hedging off.
func WithMaxAttempts(n int) CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		if n < 1 || n > maxAttemptsLimit {
			return c, invalid("WithMaxAttempts", n, fmt.Sprintf("must be between 1 and %d", maxAttemptsLimit))
		}
		c.maxAttempts = n
		return c, nil
	})
}

// WithRetryDisabled turns retrying off: most useful for one call. Hedging,
// where installed, is unaffected (see WithHedgingDisabled).
func WithRetryDisabled() CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		c.retryDisabled = true
		return c, nil
	})
}

// WithRetryableCodes sets the status codes that may be retried. Default
// Unavailable only: it is the one code that says the server could not take
// the call. Only the listed codes are retried, and only when the retry is safe
// (see UnaryClientRetry). OK is invalid.
func WithRetryableCodes(retryable ...codes.Code) CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		set, err := newCodeSet("WithRetryableCodes", retryable)
		if err != nil {
			return c, err
		}
		c.retryable = set
		return c, nil
	})
}

// WithBackoff sets the exponential backoff between retries of failures that
// the server returned: before retry n the wait is random in
// [0, min(initial*multiplier^(n-1), max)], uniformly ("full jitter": of the
// usual jitters, the one that spreads contending clients most). Defaults
// 50ms, 5s and 2. A service config's retryPolicy (WithServiceConfig) instead
// jitters its own backoff by ±20%, as gRFC A6 now specifies; WithBackoff
// given to a call brings full jitter back for that call. Failures of a stale
// connection are retried at once, without backoff, and so are a hedged call's
// resends (gRFC A6). initial and max must be positive, initial <= max,
// multiplier >= 1.
func WithBackoff(initial, max time.Duration, multiplier float64) CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		switch {
		case initial <= 0:
			return c, invalid("WithBackoff", initial, "initial must be positive")
		case max < initial:
			return c, invalid("WithBackoff", max, "max must be at least initial")
		case !(multiplier >= 1) || math.IsInf(multiplier, 0):
			return c, invalid("WithBackoff", multiplier, "multiplier must be a finite number >= 1")
		}
		c.initialBackoff, c.maxBackoff, c.backoffMultiplier = initial, max, multiplier
		c.backoffFunc, c.a6Jitter = nil, false
		return c, nil
	})
}

// WithBackoffFunc uses a go-grpc-middleware/v2 retry.BackoffFunc instead of
// the built-in backoff; attempt is 1 before the first retry. Pushback and
// deadlines still apply. nil is invalid.
func WithBackoffFunc(f retry.BackoffFunc) CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		if f == nil {
			return c, invalid("WithBackoffFunc", "nil", "must not be nil")
		}
		c.backoffFunc = f
		return c, nil
	})
}

// WithPerAttemptTimeout bounds each attempt, retried or hedged. An attempt
// that runs out of its own time is sent again if the method may be (a hedged
// call starts its next attempt at once); the caller's deadline or
// cancellation never is. 0 (the default) means no per-attempt bound. A
// negative value is invalid.
func WithPerAttemptTimeout(d time.Duration) CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		if d < 0 {
			return c, invalid("WithPerAttemptTimeout", d, "must not be negative")
		}
		c.perAttemptTimeout = d
		return c, nil
	})
}

// WithRetryBufferSize sets how many bytes of sent messages a client or bidi
// stream keeps for replay on retry. Past it the stream commits to its current
// attempt and is no longer retried. Default 256 KiB, as grpc-go. A negative
// value is invalid.
func WithRetryBufferSize(bytes int) CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		if bytes < 0 {
			return c, invalid("WithRetryBufferSize", bytes, "must not be negative")
		}
		c.retryBufferBytes = bytes
		return c, nil
	})
}

// WithHedgeDelay hedges calls of idempotent methods: if no attempt has
// finished d after the last one started, another starts, up to
// WithMaxAttempts attempts in flight. Given to DialOptions or to one call of
// a client made with it, it turns hedging on (for that call); the interceptor
// from UnaryClientHedge hedges without it, after the adaptive delay. 0 selects
// the adaptive delay (see WithAdaptiveHedgeDelay); a negative value is
// invalid.
func WithHedgeDelay(d time.Duration) CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		if d < 0 {
			return c, invalid("WithHedgeDelay", d, "must not be negative")
		}
		c.hedge, c.hedgeDelay = true, d
		return c, nil
	})
}

// WithHedgingDisabled turns hedging off: most useful for one call. The call
// is then retried like any other.
func WithHedgingDisabled() CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		c.hedgeDisabled = true
		return c, nil
	})
}

// WithNonFatalCodes sets the codes after which a hedged call sends its next
// attempt at once instead of ending (gRFC A6 nonFatalStatusCodes). Default
// Unavailable. OK is invalid.
func WithNonFatalCodes(nonFatal ...codes.Code) CallOption {
	return callOption(func(c callSettings) (callSettings, error) {
		set, err := newCodeSet("WithNonFatalCodes", nonFatal)
		if err != nil {
			return c, err
		}
		c.nonFatal = set
		return c, nil
	})
}

// WithAdaptiveHedgeDelay hedges calls of idempotent methods after the
// quantile of each method's recent attempt latencies, kept within [min, max],
// and turns hedging on in DialOptions, as WithHedgeDelay(0) does. The
// estimator belongs to the client, so this is a ClientOption; a call chooses
// the adaptive delay with WithHedgeDelay(0). Defaults: quantile 0.95, min 5ms,
// max 1s: hedging at the p95 sends about 5% more attempts (The Tail at
// Scale). A method is not hedged on time until 20 of its calls were seen.
// quantile must be in (0, 1), min > 0 and min <= max.
func WithAdaptiveHedgeDelay(quantile float64, min, max time.Duration) ClientOption {
	return clientOption(func(c *config) error {
		switch {
		case !(quantile > 0 && quantile < 1):
			return invalid("WithAdaptiveHedgeDelay", quantile, "quantile must be in (0, 1)")
		case min <= 0:
			return invalid("WithAdaptiveHedgeDelay", min, "min must be positive")
		case max < min:
			return invalid("WithAdaptiveHedgeDelay", max, "max must be at least min")
		}
		c.hedgeQuantile, c.hedgeMinDelay, c.hedgeMaxDelay = quantile, min, max
		c.call.hedge, c.call.hedgeDelay = true, 0
		return nil
	})
}

// WithRetryBudget sizes the one budget that pays for every extra attempt of
// a client: retries, stream retries, hedges and hedged calls' resends. In any
// window, extra attempts may not exceed ratio times the calls of the window
// plus minPerSecond per second of the window, which a fresh or quiet client
// can always spend. The defaults, 0.2, 10 and 10s, are Finagle's and
// Linkerd's. Attempts started by the hedge delay may take only part of it
// (WithHedgeBudget), so that hedges never leave retries without room. An
// exhausted budget only refuses new extra attempts. ratio must be in [0, 1],
// minPerSecond >= 0, window in [1s, 1h] (one bucket per second). It replaces
// WithRetryThrottling.
func WithRetryBudget(ratio, minPerSecond float64, window time.Duration) ClientOption {
	return clientOption(func(c *config) error {
		switch {
		case !(ratio >= 0 && ratio <= 1):
			return invalid("WithRetryBudget", ratio, "ratio must be in [0, 1]")
		case !(minPerSecond >= 0) || math.IsInf(minPerSecond, 0):
			return invalid("WithRetryBudget", minPerSecond, "minPerSecond must be a finite number >= 0")
		case window < time.Second || window > time.Hour:
			return invalid("WithRetryBudget", window, "window must be between 1s and 1h")
		}
		c.budget = budgetConfig{ratio: ratio, minPerSecond: minPerSecond, window: window, hedgeRatio: c.budget.hedgeRatio}
		return nil
	})
}

// WithHedgeBudget bounds the attempts that the hedge delay starts (not the
// resends after a failure, which are retries) to ratio times the calls of the
// budget's window plus half of its per-second floor, within the budget of
// WithRetryBudget. Default 0.1, half the budget's ratio: hedges at a p95
// delay need about 5%, and retries keep at least the other half. 0 sends no
// hedge on time (a hedged call still resends after a non-fatal failure, as
// a retry). ratio must be in [0, 1]. Under WithRetryThrottling hedges are
// throttled by the token bucket instead.
func WithHedgeBudget(ratio float64) ClientOption {
	return clientOption(func(c *config) error {
		if !(ratio >= 0 && ratio <= 1) {
			return invalid("WithHedgeBudget", ratio, "ratio must be in [0, 1]")
		}
		c.budget.hedgeRatio = ratio
		return nil
	})
}

// WithRetryThrottling replaces the ratio budget with gRFC A6 retry
// throttling: a token bucket of maxTokens that every failed attempt, retried
// or hedged, drains by 1 and every successful one refills by tokenRatio; no
// extra attempt (retry or hedge) starts while it holds half or less. Against
// a server that fails everything, a client then sends at most maxTokens/2
// extra attempts in all, plus one per call whose extra attempt was allowed
// in the same instant. maxTokens must be in (0, 1000], tokenRatio in
// (0, 1000].
func WithRetryThrottling(maxTokens, tokenRatio float64) ClientOption {
	return clientOption(func(c *config) error {
		switch {
		case !(maxTokens > 0 && maxTokens <= 1000):
			return invalid("WithRetryThrottling", maxTokens, "maxTokens must be in (0, 1000]")
		case !(tokenRatio > 0 && tokenRatio <= 1000):
			return invalid("WithRetryThrottling", tokenRatio, "tokenRatio must be in (0, 1000]")
		}
		c.budget = budgetConfig{maxTokens: maxTokens, tokenRatio: tokenRatio, hedgeRatio: c.budget.hedgeRatio}
		return nil
	})
}

// codeSet is a set of gRPC status codes (codes 0-16) as a bitmask.
type codeSet uint32

func codeSetOf(list ...codes.Code) codeSet {
	var s codeSet
	for _, c := range list {
		s |= 1 << c
	}
	return s
}

func newCodeSet(option string, list []codes.Code) (codeSet, error) {
	var s codeSet
	for _, c := range list {
		if c == codes.OK || c > codes.Unauthenticated {
			return 0, invalid(option, c, "must be a non-OK gRPC status code")
		}
		s |= 1 << c
	}
	return s, nil
}

func (s codeSet) has(c codes.Code) bool { return c < 32 && s&(1<<c) != 0 }

// AvoidTriedBackendsPolicy is the name of the load balancing policy that
// WithAvoidTriedBackends selects, for a service config of one's own:
//
//	{"loadBalancingConfig": [{"grpcguard_avoid_tried_backends": {"childPolicy": [{"round_robin": {}}]}}]}
//
// childPolicy lists policies as loadBalancingConfig does (the first one
// registered is used; absent: round_robin). grpcguard registers the policy
// with grpc (balancer.Register, grpc's own process-wide registry) when the
// package is linked in.
const AvoidTriedBackendsPolicy = avoidtried.Name

// WithAvoidTriedBackends sends each resend and each hedge of a call to a
// backend that no earlier attempt of the same call used, when one is ready,
// as Envoy's previous_hosts retry predicate does and gRFC A6 asks of hedges:
// a backend that just failed or straggles is the one most worth avoiding.
// When every ready backend has been tried, the load balancer's own pick
// stands. Off by default: it changes the load balancing policy.
//
// How: DialOptions then adds grpc.WithDefaultServiceConfig selecting the
// AvoidTriedBackendsPolicy over round_robin, so the client connects to every
// address the resolver returns (grpc-go's default, pick_first, uses one), and
// each call that may make more than one attempt carries a tried set in its
// context (one allocation per such call; nothing without this option). The
// policy lets round_robin pick, and replaces a pick of an address the call
// already tried by a READY subchannel it has not tried, in turn.
//
// What it does not override: a service config from the resolver replaces
// grpc's default service config, and with it this policy; so does a
// grpc.WithDefaultServiceConfig given after DialOptions' options (the last
// one wins). To keep it there, name AvoidTriedBackendsPolicy in that config's
// loadBalancingConfig, with your policy as its childPolicy. grpcguard's own
// WithServiceConfig configures the interceptors only and does not interfere.
// With pick_first as the child (or any policy with one subchannel) there is
// nothing to choose from: every attempt goes to the one connected backend,
// as without this option. The replacement goes only to a subchannel the
// child policy counts as ready: connected and, under client-side health
// checking (healthCheckConfig), healthy. Built without DialOptions, the
// interceptors carry the tried set with this option, and the service config
// is the user's.
func WithAvoidTriedBackends() ClientOption {
	return clientOption(func(c *config) error {
		c.avoidTried = true
		return nil
	})
}

package grpcguard

import (
	"context"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// retrier is the state one retry interceptor shares by all its calls: its
// configuration, its budget and its idempotency cache. The unary and stream
// interceptors each have their own.
type retrier struct {
	cfg    config
	err    error // invalid options: every call fails with it (InvalidArgument)
	budget *budget
	cache  *idempotencyCache
}

func newRetrier(opts []Option) *retrier {
	cfg, err := newConfig(opts)
	r := &retrier{cfg: cfg, cache: &idempotencyCache{}}
	if err != nil {
		r.err = status.Error(codes.InvalidArgument, err.Error())
		return r
	}
	r.budget = newBudget(cfg.budget)
	return r
}

// callConfig resolves the configuration of one call: the interceptor's, the
// service config's policy for the method, then the call's own grpcguard
// options.
func (r *retrier) callConfig(method string, opts []grpc.CallOption) (*config, error) {
	cfg := (&r.cfg).forMethod(method)
	cfg, err := cfg.withCallOptions(opts)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return cfg, nil
}

// UnaryClientRetry returns an interceptor that retries failed unary calls,
// safely: a call is sent again only when the failure is retryable (status
// Unavailable by default, see WithRetryableCodes) and either the failed attempt
// provably never left the client, or the method is idempotent (see
// WithIdempotentMethods; protobuf idempotency_level is honoured). A call that
// may have reached the server is never sent twice unless its method says it
// may run twice. See mayRetry for the argument.
//
// Up to 3 attempts by default (WithMaxAttempts). Failures the server returned
// wait a full-jitter exponential backoff (WithBackoff: 50ms, doubling, capped
// at 5s), or exactly what the server asks in its grpc-retry-pushback-ms
// trailer; a negative pushback stops retrying. A failure of the connection
// itself (reset, closed, or a write the Dialer refused as stale) is retried at
// once: the next attempt redials. No wait outlasts the caller's deadline: when
// the time left cannot cover it, the last attempt's error is returned at once.
// Each retry carries grpc-previous-rpc-attempts metadata. Retries are capped
// by a budget shared by the interceptor's calls (WithRetryBudget: 10% of
// calls plus 10 per second), and counted by WithMetrics.
//
// Install it outside (before) the Dialer's interceptor, so that each attempt
// is probed and the Dialer can tell whether it left the client:
//
//	grpc.WithChainUnaryInterceptor(grpcguard.UnaryClientRetry(), d.UnaryClientInterceptor())
//
// and disable grpc-go's own retry with grpc.WithDisableRetry(): it runs
// beneath interceptors, so both together multiply attempts (3 x 3 = 9).
// grpc-go still retries transparently, with or without it, a stream that
// never reached the server: in grpc@v1.85.0 stream.go, csAttempt.shouldRetry
// returns true for allowTransparentRetry at line 816 and for a first attempt
// that is Unprocessed at line 825, before it checks disableRetry at line 829.
// That never duplicates a call, and stays on.
//
// grpcguard Options given to a call override the interceptor's for that call:
// for example grpc.CallOption(grpcguard.WithMaxAttempts(5)) or
// WithRetryDisabled(). Invalid options do not panic: every call then fails
// with InvalidArgument and the option's error. If another grpcguard
// interceptor (hedging) already owns the call's attempts, the call passes
// through untouched.
func UnaryClientRetry(opts ...Option) grpc.UnaryClientInterceptor {
	r := newRetrier(opts)
	return r.unary
}

// unaryCall is the per-call state of a retried unary call: one allocation,
// reused by every attempt.
type unaryCall struct {
	a       attempt
	trailer metadata.MD
	opts    [4]grpc.CallOption // the caller's options plus grpc.Trailer, if they fit
	// peerOpts backs attempt.opts, where the attempt adds grpc.Peer, so
	// that it needs no allocation of its own.
	peerOpts [5]grpc.CallOption
}

func (r *retrier) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if r.err != nil {
		return r.err
	}
	if ownedAttempt(opts) {
		return invoker(ctx, method, req, reply, cc, opts...) // hedging owns the attempts
	}
	cfg, err := r.callConfig(method, opts)
	if err != nil {
		return err
	}
	if cfg.callTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.callTimeout)
		defer cancel()
	}
	if cfg.retryDisabled || cfg.maxAttempts <= 1 {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	r.budget.call()

	c := &unaryCall{}
	c.a.opts = c.peerOpts[:0]
	// grpc fills the caller's own Header and Trailer options too, at each
	// attempt, so they end up holding the final attempt's values.
	attemptOpts := append(append(c.opts[:0], opts...), grpc.Trailer(&c.trailer))
	for n := 1; ; n++ {
		attemptCtx, cancel := ctx, context.CancelFunc(nil)
		if n > 1 {
			attemptCtx = metadata.AppendToOutgoingContext(attemptCtx, previousAttemptsKey, strconv.Itoa(n-1))
		}
		if cfg.perAttemptTimeout > 0 {
			attemptCtx, cancel = context.WithTimeout(attemptCtx, cfg.perAttemptTimeout)
		}
		c.trailer = nil
		err := invoker(attemptCtx, method, req, reply, cc, c.a.begin(attemptOpts)...)
		// Deadlines are read from the clock, not only from Err: grpc may report
		// DeadlineExceeded before the context's own timer has fired.
		callerDone := err != nil && expired(ctx)
		attemptExpiry := false
		if cancel != nil {
			attemptExpiry = err != nil && !callerDone && expired(attemptCtx)
			cancel()
		}
		if err == nil {
			r.budget.result(false)
			return nil
		}
		code := status.Code(err)
		if cfg.retryable.has(code) {
			r.budget.result(true)
		}
		if n >= cfg.maxAttempts {
			return err
		}
		v := c.a.verdict()
		f := failure{
			code:          code,
			callerDone:    callerDone,
			attemptExpiry: attemptExpiry && code == codes.DeadlineExceeded,
			neverLeft:     v.neverLeft,
		}
		ok, unprocessed := mayRetry(cfg, f, r.idempotent(cfg, method))
		if !ok {
			return err
		}
		wait, stop := r.wait(ctx, cfg, n, c.trailer, v.connDied)
		if stop {
			return err
		}
		if !r.budget.allow() {
			cfg.metrics.retryThrottledFor(method)
			return err
		}
		cfg.metrics.retried(method, code, unprocessed)
		if err := sleep(ctx, wait); err != nil {
			return err
		}
		v.awaitRelease(ctx)
	}
}

// failure is what is known of a failed attempt when deciding whether it may
// be sent again.
type failure struct {
	code codes.Code
	// callerDone: the caller's context (or the call's own timeout) ended.
	callerDone bool
	// attemptExpiry: the attempt ran out of its per-attempt timeout while the
	// caller's context was alive.
	attemptExpiry bool
	// neverLeft: no byte of the attempt left the client or ever will, a
	// fact from its connection (see handoff.go).
	neverLeft bool
}

// mayRetry decides whether a failed attempt may be sent again. It is the only
// place that does; everything else (attempt count, pushback, budget,
// deadline) only decides whether there is time and room for it. unprocessed
// reports that the retry is allowed only because the attempt never reached
// the server.
//
// The safety argument. A retry sends the request again, so it is safe exactly
// when running the call twice cannot harm, or when the first attempt cannot
// have run:
//
//   - The caller's own cancellation or deadline is never retried: the caller
//     has given up, and a retry would outlive its wish.
//   - Only codes the user called retryable are retried (Unavailable by
//     default, which says the server could not take the call). An attempt
//     that ran out of its own per-attempt timeout while the caller waits is
//     retried whatever the codes, since that timeout is the user's request to
//     try again.
//   - If no byte of the attempt left the client, the server cannot have seen
//     it: any method may be sent again, idempotent or not. Only facts prove
//     it: the attempt's own connection can no longer write and wrote nothing
//     since the attempt started, or grpc gave the attempt no transport (see
//     handoff.go). Never the text of a status: a server or a middle tier can
//     send any text, after any side effect. Streams the server refused
//     (REFUSED_STREAM, or above a GOAWAY's last stream id) are grpc-go's to
//     resend, transparently, and it does.
//   - Otherwise the request may have reached the server and run, even when
//     the reply says Unavailable or the connection broke before the answer.
//     It may be sent again only if the method is idempotent: declared by the
//     user (WithIdempotentMethods, or a service config retry policy) or by
//     its protobuf descriptor (idempotency_level IDEMPOTENT or
//     NO_SIDE_EFFECTS).
func mayRetry(cfg *config, f failure, idempotent bool) (ok, unprocessed bool) {
	if f.callerDone {
		return false, false
	}
	if !f.attemptExpiry && !cfg.retryable.has(f.code) {
		return false, false
	}
	if idempotent {
		return true, false
	}
	if f.neverLeft {
		return true, true
	}
	return false, false
}

// idempotent reports whether the user or the method's descriptor says the
// method may run more than once.
func (r *retrier) idempotent(cfg *config, method string) bool {
	return cfg.policyRetryable || idempotency{declared: cfg.idempotent, cache: r.cache}.of(method)
}

// wait returns how long to wait before retry n (n = 1 before the first
// retry), or stop when the call must end with the last attempt's error: the
// server's pushback said so, or the caller's deadline comes before the wait
// ends.
func (r *retrier) wait(ctx context.Context, cfg *config, n int, trailer metadata.MD, connDied bool) (wait time.Duration, stop bool) {
	pb, found, stop := pushback(trailer)
	switch {
	case stop:
		return 0, true
	case found:
		wait = pb // the server's word, exact
	case connDied:
		wait = 0 // a new connection is the cure, not time
	default:
		wait = cfg.backoff(ctx, n)
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= wait {
		return 0, true
	}
	return wait, false
}

// expired reports whether ctx has ended or its deadline has passed.
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// sleep waits d or until ctx ends, whichever is first, and leaves no timer
// running.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

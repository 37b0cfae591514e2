package grpcguard

import (
	"context"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

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
// by the budget of WithRetryBudget (20% of calls plus 10 per second), or by
// WithRetryThrottling, and counted by WithMetrics.
//
// Install it outside (before) the Dialer's interceptor, so that each attempt
// is probed and the Dialer can tell whether it left the client:
//
//	grpc.WithChainUnaryInterceptor(grpcguard.UnaryClientRetry(), d.UnaryClientInterceptor())
//
// and disable grpc-go's own retry with grpc.WithDisableRetry(): it runs
// beneath interceptors, so both together multiply attempts (3 x 3 = 9).
// grpc-go still retries transparently, with or without it, a stream its
// transport never wrote or the server refused (the first attempt only): that
// never duplicates a call, and stays on.
//
// CallOptions given to a call override the interceptor's for that call: for
// example WithMaxAttempts(5) or WithRetryDisabled(). Invalid options do not
// panic: every call then fails with InvalidArgument and the option's error.
// If another grpcguard interceptor (hedging, or a retry outside this one)
// already owns the call's attempts, the call passes through untouched; this
// one marks its own attempts the same way.
//
// Built on its own, the interceptor has its own budget; DialOptions gives
// its retry, stream retry and hedging one budget for the whole client.
func UnaryClientRetry(opts ...Option) grpc.UnaryClientInterceptor {
	return standaloneState(opts).unaryRetry
}

func (cs *clientState) unaryRetry(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if cs.err != nil {
		return cs.err
	}
	if ownedAttempt(opts) {
		return cs.invoke(ctx, method, req, reply, cc, invoker, opts) // an outer interceptor owns the attempts
	}
	var p plan
	if err := cs.planFor(&p, method, opts); err != nil {
		return err
	}
	return cs.runUnary(ctx, &p, false, method, req, reply, cc, invoker, opts)
}

// runUnary runs a planned unary call: hedged (where canHedge), retried, or
// sent once.
func (cs *clientState) runUnary(ctx context.Context, p *plan, canHedge bool, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	if p.callTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.callTimeout)
		defer cancel()
	}
	if canHedge && p.hedges() {
		if rm, ok := reply.(proto.Message); ok { // each attempt needs its own reply
			return cs.hedge(ctx, p, method, req, rm, cc, invoker, opts)
		}
	}
	if !p.retries() {
		return cs.invoke(ctx, method, req, reply, cc, invoker, opts)
	}
	return cs.retry(ctx, p, method, req, reply, cc, invoker, opts)
}

// unaryCall is the per-call state of a retried unary call, reused by every
// attempt, and by later calls through unaryCalls: grpc writes the trailer,
// header and peer options before Invoke returns and keeps none of them, so
// once the call returns nothing refers to it.
type unaryCall struct {
	a       attempt
	trailer metadata.MD
	header  metadata.MD        // only asked for when the plan commits at headers
	opts    [6]grpc.CallOption // the caller's options plus ours, if they fit
	// peerOpts backs attempt.opts, where the attempt adds grpc.Peer, so
	// that it needs no allocation of its own.
	peerOpts [7]grpc.CallOption
	// cover records attempts that may have reached a deduplicating server.
	cover dedupCover
}

// retry sends the call until it succeeds or the after-failure step says
// stop. Each attempt carries the owner marker, so that a grpcguard
// interceptor beneath passes it through instead of multiplying it.
var unaryCalls = sync.Pool{New: func() any { return new(unaryCall) }}

func (cs *clientState) retry(ctx context.Context, p *plan, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	c := unaryCalls.Get().(*unaryCall)
	defer func() {
		*c = unaryCall{} // drop every reference to this call
		unaryCalls.Put(c)
	}()
	c.a.opts = c.peerOpts[:0]
	// grpc fills the caller's own Header and Trailer options too, at each
	// attempt, so they end up holding the final attempt's values.
	attemptOpts := append(append(c.opts[:0], opts...), grpc.Trailer(&c.trailer), attemptOwner{})
	if p.commitAtHeaders {
		attemptOpts = append(attemptOpts, grpc.Header(&c.header))
	}
	p.dedup = &c.cover
	var lastErr error
	for n := 1; ; n++ {
		attemptCtx, cancel := ctx, context.CancelFunc(nil)
		var resend grpc.CallOption
		if n > 1 {
			attemptCtx = metadata.AppendToOutgoingContext(attemptCtx, previousAttemptsKey, strconv.Itoa(n-1))
			if c.cover.used { // the resend relies on the server's deduplication
				if c.cover.scope != "" { // learned, not declared: ask the store first
					// Through the Dialer's check before the pick, like every
					// attempt: it probes the conn and counts the lookup in flight.
					viaPick := func(ctx context.Context, m string, rq, rp any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
						return cs.invoke(ctx, m, rq, rp, cc, invoker, opts)
					}
					lr := c.cover.lookupBeforeResend(attemptCtx, method, req, reply, cc, viaPick, attemptOpts, lastErr)
					if lr.answered {
						return lr.err
					}
					c.cover.fence = lr.fence
				}
				attemptCtx, resend = c.cover.resendAttempt(attemptCtx, attemptOpts)
			}
		}
		if p.perAttemptTimeout > 0 {
			attemptCtx, cancel = context.WithTimeout(attemptCtx, p.perAttemptTimeout)
		}
		c.trailer, c.header = nil, nil
		aopts := c.a.begin(attemptOpts)
		if resend != nil {
			aopts = append(aopts, resend) // last, so that grpc applies it
		}
		if n == 1 {
			cs.budget.call(c.a.start) // a call that may retry earns extra attempts
		}
		err := cs.invoke(attemptCtx, method, req, reply, cc, invoker, aopts)
		// Deadlines are read from the clock, not only from Err: grpc may report
		// DeadlineExceeded before the context's own timer has fired.
		callerDone := err != nil && expired(ctx)
		attemptExpiry := false
		if cancel != nil {
			attemptExpiry = err != nil && !callerDone && expired(attemptCtx)
			cancel()
		}
		if err == nil {
			cs.succeeded()
			return nil
		}
		v := c.a.verdict()
		code := status.Code(err)
		f := failure{
			code:          code,
			callerDone:    callerDone,
			attemptExpiry: attemptExpiry && code == codes.DeadlineExceeded,
			neverLeft:     v.neverLeft,
			committed:     c.header != nil,
		}
		d := cs.afterFailure(ctx, p, f, n, c.trailer, v)
		if !d.resend {
			return err
		}
		lastErr = err
		if err := sleep(ctx, d.wait); err != nil {
			return err
		}
		v.awaitRelease(ctx)
	}
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

package grpcguard

import (
	"context"
	"sync"
	"time"

	"github.com/grpcguard/grpcguard/internal/avoidtried"
	"google.golang.org/grpc"
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
	r := unaryRPC{method: method, req: req, reply: reply, cc: cc, invoker: invoker, opts: opts}
	if ownedAttempt(opts) {
		return cs.invoke(ctx, &r, reply, opts) // an outer interceptor owns the attempts
	}
	var p plan
	if err := cs.planFor(&p, method, opts); err != nil {
		return err
	}
	return cs.runUnary(ctx, &p, false, &r)
}

// unaryRPC is what a unary interceptor was handed for one call.
type unaryRPC struct {
	method  string
	req     any
	reply   any // the caller's
	cc      *grpc.ClientConn
	invoker grpc.UnaryInvoker
	opts    []grpc.CallOption // the caller's
}

// runUnary runs a planned unary call: hedged (where canHedge), retried, or
// sent once.
func (cs *clientState) runUnary(ctx context.Context, p *plan, canHedge bool, r *unaryRPC) error {
	if p.callTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.callTimeout)
		defer cancel()
	}
	if canHedge && p.hedges() {
		if rm, ok := r.reply.(proto.Message); ok { // each attempt needs its own reply
			return cs.hedge(ctx, p, r, rm)
		}
	}
	if !p.retries() {
		return cs.invoke(ctx, r, r.reply, r.opts)
	}
	return cs.retry(ctx, p, r)
}

// unaryCall is the per-call state of a retried unary call, reused by every
// attempt and, through unaryCalls, by later calls: grpc writes an attempt's
// trailer, header and peer before it says it finished (grpc.OnFinish) and
// keeps none of them, so once the call returns nothing refers to it. An
// attempt that returned before grpc finished with it (given up on beneath
// us) keeps its storage: the call moves on to a new one and is not pooled.
type unaryCall struct {
	a         attempt
	abandoned bool  // an attempt's storage was left to grpc
	attempts  int   // sent so far
	delay     int64 // ns waited with no attempt in flight
	// cover records attempts that may have reached a deduplicating server.
	cover dedupCover
}

// unaryCalls keeps the state of retried calls for reuse.
var unaryCalls = sync.Pool{New: func() any { return new(unaryCall) }}

// retry sends the call until it succeeds or the after-failure step says
// stop.
func (cs *clientState) retry(ctx context.Context, p *plan, r *unaryRPC) error {
	if cs.cfg.avoidTried {
		ctx = avoidtried.NewContext(ctx) // the call's attempts avoid each other's backends
	}
	c := unaryCalls.Get().(*unaryCall)
	defer func() {
		if !c.abandoned {
			c.a.clear() // drop every reference to this call
			c.cover, c.attempts, c.delay = dedupCover{}, 0, 0
			unaryCalls.Put(c)
		}
	}()
	err := cs.retryAttempts(ctx, p, r, c)
	if h := cs.cfg.hooks.OnCallEnd; h != nil {
		h(ctx, CallEndEvent{Method: p.fullMethod, MethodLabel: p.method.label, Attempts: c.attempts, Retries: c.attempts - 1, RetryDelay: time.Duration(c.delay), Err: err})
	}
	return err
}

// retryAttempts sends the attempts of a retried call, with c's storage.
func (cs *clientState) retryAttempts(ctx context.Context, p *plan, r *unaryRPC, c *unaryCall) error {
	// grpc fills the caller's own Header and Trailer options too, at each
	// attempt, so they end up holding the final attempt's values.
	spec := attemptSpec{plan: p, mode: ctxShared, header: p.commitAtHeaders}
	parent := ctx
	p.dedup = &c.cover
	a := &c.a
	var lastErr error
	for n := 1; ; n++ {
		opts := r.opts
		var resend grpc.CallOption
		if n > 1 && c.cover.used { // the resend relies on the server's deduplication
			if c.cover.scope != "" { // learned, not declared: ask the store first
				lr := c.cover.lookupBeforeResend(ctx, r.method, r.req, r.reply, r.cc, cs.viaPick(r.invoker), opts, lastErr)
				if lr.answered {
					return lr.err
				}
				c.cover.fence = lr.fence
			}
			parent, resend = c.cover.resendAttempt(ctx, opts)
		}
		cs.begin(parent, a, n, spec, opts)
		c.attempts = n
		aopts := a.opts
		if resend != nil {
			aopts = append(aopts, resend) // last, so that grpc applies it
		}
		err := cs.invoke(a.ctx, r, r.reply, aopts)
		var o facts
		if err != nil {
			o = a.failed(err, ctx, p, nil, false)
		}
		a.end()
		if !a.finished.Load() {
			// Answered beneath us while grpc may still run the attempt:
			// its storage is left to grpc, and so is this call's.
			c.abandoned = true
			a = new(attempt)
		}
		if err == nil {
			cs.succeeded()
			return nil
		}
		d := cs.afterFailure(ctx, p, o, n)
		if !d.resend {
			return notResentError(err, d.why)
		}
		lastErr = err
		waited := nanotime()
		if err := sleep(ctx, d.wait); err != nil {
			return err
		}
		o.verdict.awaitRelease(ctx)
		c.delay += nanotime() - waited
	}
}

// viaPick returns invoker behind the Dialer's check before the pick, which
// every attempt passes: a dedup lookup before a resend is probed and counted
// in flight like one.
func (cs *clientState) viaPick(invoker grpc.UnaryInvoker) grpc.UnaryInvoker {
	if cs.pickUnary == nil {
		return invoker
	}
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		return cs.pickUnary(ctx, method, req, reply, cc, invoker, opts...)
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

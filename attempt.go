package grpcguard

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// The attempt lifecycle, the same for every engine that makes attempts
// (unary retry, stream retry, hedging):
//
//  1. begin starts an attempt: its number, its context (the
//     previous-attempts metadata of a resend, the per-attempt timeout), the
//     budget's charge for the call's first attempt, the storage grpc
//     reports into, and the stamp (see handoff.go).
//  2. The engine hands a.opts to the next invoker or streamer, in a.ctx.
//  3. failed turns what a failed attempt left behind into the facts mayRetry
//     reads (facts), and afterFailure (decision.go) decides.
//  4. end releases the attempt's context and timer.
//
// No engine builds a failure by hand, so every one of them reads the same
// facts the same way.

// errAttemptTimeout is the cause of an attempt's context ended by its
// per-attempt timeout (WithPerAttemptTimeout, a service config's).
var errAttemptTimeout = errors.New("grpcguard: per-attempt timeout")

// ctxMode says what context an engine's attempt needs of its own.
type ctxMode uint8

const (
	// ctxShared: the attempt runs in its parent's context; only a
	// per-attempt timeout gives it one of its own (unary retry, the
	// original attempt of a hedged call).
	ctxShared ctxMode = iota
	// ctxCancel: the attempt has a context of its own that the engine
	// cancels (a hedge, cancelled when another attempt wins).
	ctxCancel
	// ctxStream: a cancelable context whose per-attempt timeout is a timer
	// that the stream stops when it commits (stream retry).
	ctxStream
)

// attempt is one attempt of a call. The engine's goroutine running it owns
// it; grpc writes peer, trailer and header while it runs, and reports that it
// is done with them by calling the attempt's grpc.OnFinish.
type attempt struct {
	// The attempt rides in its own options, as the marker by which the
	// grpcguard interceptors beneath it know that an outer one owns the
	// call's attempts (ownedAttempt), and by which the Dialer finds it
	// (markUsed): a pointer, so it costs no allocation.
	grpc.EmptyCallOption

	n     int   // 1 for the original
	start int64 // nanotime just before it went to the invoker

	ctx    context.Context
	cancel context.CancelFunc // nil when ctx is its parent's
	timer  *time.Timer        // a stream attempt's per-attempt timeout
	timed  bool               // a per-attempt timeout applies

	// What grpc reports for the attempt: the transport it ended on (zero
	// when none), the server's trailer and, when asked, its header.
	peer    peer.Peer
	trailer metadata.MD
	header  metadata.MD
	// finished: grpc called onFinish, after it wrote peer, trailer and
	// header: it is done with the attempt (see handoff.go, 4). An attempt
	// whose invoker returned without it was abandoned beneath us (or never
	// reached grpc): its storage may still be written and is not reused.
	finished atomic.Bool
	onFinish grpc.OnFinishCallOption // bound to this attempt once

	opts []grpc.CallOption
	buf  [10]grpc.CallOption // backs opts while they fit: no allocation
}

// attemptSpec is how an engine starts its attempts. (The parent context is
// begin's own parameter: in one struct with the plan, it would make the
// plan escape with it.)
type attemptSpec struct {
	plan *plan
	mode ctxMode
	// header asks grpc for the attempt's response header: a hedge whose
	// caller asked for it, or a call that commits at headers.
	header bool
	// hedge: the hedge delay started the attempt (for Hooks.OnAttempt).
	hedge bool
}

// begin starts attempt n (1: the original) of the call planned by s.plan,
// under parent, with the caller's options opts. It is the one place an
// attempt starts.
func (cs *clientState) begin(parent context.Context, a *attempt, n int, s attemptSpec, opts []grpc.CallOption) {
	a.n = n
	ctx := parent
	if n > 1 {
		ctx = metadata.AppendToOutgoingContext(ctx, previousAttemptsKey, strconv.Itoa(n-1))
	}
	a.cancel, a.timer, a.timed = nil, nil, false
	d := s.plan.perAttemptTimeout
	switch {
	case d > 0 && s.mode == ctxStream:
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		a.cancel = func() { cancel(context.Canceled) }
		a.timer = time.AfterFunc(d, func() { cancel(errAttemptTimeout) })
		a.timed = true
	case d > 0:
		ctx, a.cancel = context.WithTimeoutCause(ctx, d, errAttemptTimeout)
		a.timed = true
	case s.mode != ctxShared:
		ctx, a.cancel = context.WithCancel(ctx)
	}
	a.ctx = ctx

	if h := cs.cfg.hooks.OnAttempt; h != nil {
		h(ctx, AttemptEvent{Method: s.plan.fullMethod, MethodLabel: s.plan.method.label, Attempt: n, Hedge: s.hedge, Stream: s.mode == ctxStream})
	}
	a.stamp(opts, s.header)
	if n == 1 && s.plan.maxAttempts > 1 {
		cs.budget.call(a.start) // a call that may send more attempts earns them
	}
}

// stamp gives the attempt the storage grpc reports into and its options,
// opts plus those, and stamps its start: the last thing before the invoker.
// header asks for the response header too.
func (a *attempt) stamp(opts []grpc.CallOption, header bool) []grpc.CallOption {
	a.peer, a.trailer, a.header = peer.Peer{}, nil, nil
	a.finished.Store(false)
	if a.onFinish.OnFinish == nil {
		a.onFinish.OnFinish = a.markFinished
	}
	a.opts = append(append(a.buf[:0], opts...), grpc.Peer(&a.peer), grpc.Trailer(&a.trailer), a.onFinish, a)
	if header {
		a.opts = append(a.opts, grpc.Header(&a.header))
	}
	a.start = nanotime()
	return a.opts
}

// clear drops every reference the attempt holds to its call, keeping what is
// bound to the attempt itself, for reuse by another call.
func (a *attempt) clear() {
	a.n, a.start = 0, 0
	a.ctx, a.cancel, a.timer, a.timed = nil, nil, nil, false
	a.peer, a.trailer, a.header = peer.Peer{}, nil, nil
	a.opts, a.buf = nil, [len(a.buf)]grpc.CallOption{}
}

// markFinished is the attempt's grpc.OnFinish. grpc calls it once it has
// written the attempt's peer, trailer and header (clientStream.finish runs
// the options' after hooks first), or when it failed the attempt before
// giving it a transport.
func (a *attempt) markFinished(error) { a.finished.Store(true) }

// stopTimer stops a stream attempt's per-attempt timeout (at commit).
func (a *attempt) stopTimer() {
	if a.timer != nil {
		a.timer.Stop()
	}
}

// end releases the attempt's context and timer.
func (a *attempt) end() {
	a.stopTimer()
	if a.cancel != nil {
		a.cancel()
	}
}

// facts is what a failed attempt tells the after-failure step.
type facts struct {
	failure
	attempt int   // the attempt's number
	err     error // the attempt's
	verdict verdict
	trailer metadata.MD // the server's, for its pushback
}

// failed turns attempt a, which failed with err, into the facts the decision
// reads. It is the only place they are built. call is the call's context;
// stream is the attempt's stream when it was created (a stream retry), nil
// otherwise; committed says the engine already committed the call.
//
// What grpc wrote for the attempt is read only once grpc said it finished
// with it: an attempt abandoned beneath us (an inner interceptor that gave up
// on grpc's call and returned) is "may have been sent", with no pushback,
// and, under a retryPolicy, committed.
func (a *attempt) failed(err error, call context.Context, p *plan, stream grpc.ClientStream, committed bool) facts {
	code := status.Code(err)
	o := facts{failure: failure{code: code, callerDone: expired(call), committed: committed}, attempt: a.n, err: err}
	o.attemptExpiry = !o.callerDone && a.outOfTime() && (code == codes.DeadlineExceeded || code == codes.Canceled)
	switch {
	case stream != nil:
		// A created stream names its transport in its context; it has
		// ended, so its trailer and header are final and do not wait.
		// A stream without one (a wrapper's context) is unknown.
		if pr, ok := peer.FromContext(stream.Context()); ok {
			o.verdict = verdictOf(a.start, pr)
		} else {
			o.verdict = verdict{start: a.start}
		}
		o.trailer = stream.Trailer()
		if p.commitAtHeaders {
			md, _ := stream.Header()
			o.committed = o.committed || md != nil
		}
	case a.finished.Load():
		o.verdict = a.reported()
		o.trailer = a.trailer
		o.committed = o.committed || (p.commitAtHeaders && a.header != nil)
	default:
		o.verdict = a.reported()
		o.committed = o.committed || p.commitAtHeaders
	}
	o.neverLeft = o.verdict.neverLeft
	return o
}

// reported judges the attempt from the transport grpc reported for it, once
// grpc is done with it; before that nothing is known: "may have been sent".
func (a *attempt) reported() verdict {
	if !a.finished.Load() {
		return verdict{start: a.start}
	}
	return verdictOf(a.start, &a.peer)
}

// outOfTime reports whether the attempt's own timeout has ended it. The
// clock is read too: grpc may report DeadlineExceeded before the context's
// timer has fired.
func (a *attempt) outOfTime() bool {
	if !a.timed {
		return false
	}
	if context.Cause(a.ctx) == errAttemptTimeout {
		return true
	}
	dl, ok := a.ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

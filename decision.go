package grpcguard

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
)

// Every extra attempt a client sends is decided here, whichever interceptor
// sends it: a failed attempt of a retried call, of a retried stream or of a
// hedged call goes through afterFailure, and an attempt started by the hedge
// delay through mayHedge. Both spend from the client's one budget and count
// what they decide.

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
	// committed: the call can no longer be resent whatever the failure: a
	// stream delivered a message or outgrew its replay buffer, or response
	// headers arrived under a service config retryPolicy.
	committed bool
	// deduplicated: the server runs this call's request id at most once, and
	// a resend reaches it within the window it keeps ids (dedupScope, dedupCover.covers).
	deduplicated bool
}

// mayRetry decides whether a failed attempt may be sent again. It is the only
// place that does, for retries, stream retries and hedged calls' resends
// alike; everything else (attempt count, pushback, budget, deadline) only
// decides whether there is time and room for it. resendable is the set of
// codes the call's plan allows to resend. unprocessed reports that the
// resend is allowed only because the attempt never reached the server.
//
// The safety argument. A resend sends the request again, so it is safe
// exactly when running the call twice cannot harm, or when the first attempt
// cannot have run:
//
//   - The caller's own cancellation or deadline is never retried: the caller
//     has given up, and a retry would outlive its wish.
//   - Only codes the user called retryable (or non-fatal, for a hedged call)
//     are resent (Unavailable by default, which says the server could not
//     take the call). An attempt that ran out of its own per-attempt timeout
//     while the caller waits is resent whatever the codes, since that
//     timeout is the user's request to try again.
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
//     user (WithIdempotentMethods, or a service config policy) or by its
//     protobuf descriptor (idempotency_level IDEMPOTENT or NO_SIDE_EFFECTS).
//     Hedging runs only such methods.
//   - Or if the server deduplicates it: the call carries a request id, the
//     very replica the attempt reached said so in its responses (or the user
//     declared it with WithServerDedup), every attempt that may have run did
//     so under one store, and the resend reaches it well within the time the
//     store keeps ids. The resend carries the same id and says which store
//     the first attempt met and how old it is when it leaves; the server
//     answers it from the first outcome, or refuses it, and never runs it
//     twice (dedup.UnaryServerInterceptor). When the deduplication was learned, not
//     declared, the resend is sent only after the dedup service answered
//     for the id (lookupBeforeResend): the replica it reaches may not be the
//     one that advertised. Streams are not deduplicated.
func mayRetry(resendable codeSet, f failure, idempotent bool) (ok, unprocessed bool) {
	if f.callerDone {
		return false, false
	}
	if !f.attemptExpiry && !resendable.has(f.code) {
		return false, false
	}
	if idempotent {
		return true, false
	}
	if f.neverLeft {
		return true, true
	}
	if f.deduplicated {
		return true, false
	}
	return false, false
}

// decision is the after-failure step's answer.
type decision struct {
	// resend: send the call again after wait (0: at once). The budget has
	// paid for it and it is counted.
	resend bool
	wait   time.Duration
	// final: the failure ends the call, attempts still in flight included
	// (a hedged call): it may not be resent at all, or the server said
	// stop. Without resend or final, the failure only sends nothing more
	// (no attempt, time or budget left) and a hedged call waits for the
	// attempts still in flight.
	final bool
	// why says why a failure the call would resend is not resent: one of
	// the Reason constants, "" when the failure is not one the call resends
	// (its code, or the caller gave up).
	why string
}

// afterFailure is the one step every engine takes after a failed attempt,
// with the facts attempt.failed built: it feeds the budget's throttling,
// asks the server's deduplication when only it can make a resend safe, asks
// mayRetry, reads the server's pushback, checks the attempts left and the
// deadline, takes the resend from the budget, counts it, and answers: resend
// now, resend after a wait, or not. started is the number of attempts the
// call has started.
func (cs *clientState) afterFailure(ctx context.Context, p *plan, o facts, started int) decision {
	f := o.failure
	resendable := p.resendable()
	if resendable.has(f.code) {
		cs.budget.result(true) // gRFC A6: a failure that may be resent drains a token
	}
	if p.dedup != nil && !p.idempotent && !f.neverLeft && !f.callerDone && hasRequestID(ctx) {
		// The attempt may have reached the server: only its deduplication
		// of the call's request id can make a resend safe. Every such
		// attempt is recorded, whatever is decided.
		now := nanotime()
		scope, window, ok := cs.dedupScope(p.fullMethod, o.verdict.remote, now)
		p.dedup.record(scope, window, ok, o.verdict.start)
		f.deduplicated = p.dedup.covers(now)
	}
	ok, unprocessed := mayRetry(resendable, f, p.idempotent)
	if !ok {
		d := decision{final: true}
		if !f.callerDone && (resendable.has(f.code) || f.attemptExpiry) {
			d.why = ReasonMayHaveRun // the only other reason mayRetry refuses
		}
		return cs.notResent(ctx, p, o, d)
	}
	pb, pushed, stop := pushback(o.trailer)
	switch {
	case stop:
		return cs.notResent(ctx, p, o, decision{final: true, why: ReasonServerPushback})
	case f.committed:
		return cs.notResent(ctx, p, o, decision{why: ReasonCommitted})
	case started >= p.maxAttempts:
		return cs.notResent(ctx, p, o, decision{why: ReasonAttemptsExhausted})
	}
	var wait time.Duration
	switch {
	case pushed:
		wait = pb // the server's word, exact
	case o.verdict.connDied, p.hedged:
		wait = 0 // a new connection is the cure, not time; A6 resends hedges at once
	default:
		wait = p.backoff(ctx, started)
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= wait {
		return cs.notResent(ctx, p, o, decision{why: ReasonNoTimeLeft})
	}
	m := cs.cfg.metrics
	if !cs.budget.allow(extraRetry) {
		m.retryThrottledFor(p.method)
		return cs.notResent(ctx, p, o, decision{why: ReasonBudgetExhausted})
	}
	m.retried(p.method, f.code, unprocessed)
	why := ReasonIdempotent
	switch {
	case unprocessed:
		why = ReasonNeverLeft
	case !p.idempotent:
		why = ReasonDeduplicated
		m.retriedDeduplicated(p.method)
	}
	if h := cs.cfg.hooks.OnRetry; h != nil {
		h(ctx, RetryEvent{Method: p.fullMethod, MethodLabel: p.method.label, Attempt: o.attempt, Err: o.err, Peer: o.verdict.remote, Reason: why, Wait: wait})
	}
	return decision{resend: true, wait: wait}
}

// notResent reports d, a decision not to resend, to the hooks when it has a
// reason, and returns it.
func (cs *clientState) notResent(ctx context.Context, p *plan, o facts, d decision) decision {
	if h := cs.cfg.hooks.OnNotResent; h != nil && d.why != "" {
		h(ctx, NotResentEvent{Method: p.fullMethod, MethodLabel: p.method.label, Attempt: o.attempt, Err: o.err, Peer: o.verdict.remote, Reason: d.why})
	}
	return d
}

// mayHedge decides whether the hedge delay may start another attempt of a
// hedged call now: the budget's hedge share pays for it, and it is counted.
func (cs *clientState) mayHedge(p *plan) bool {
	if !cs.budget.allow(extraHedge) {
		cs.cfg.metrics.hedgeThrottledFor(p.method)
		return false
	}
	return true
}

// succeeded feeds a successful attempt to the budget's throttling.
func (cs *clientState) succeeded() { cs.budget.result(false) }

// expired reports whether ctx has ended or its deadline has passed.
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

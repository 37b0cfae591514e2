package grpcguard

import (
	"context"
	"sync"
	"time"

	"github.com/grpcguard/grpcguard/internal/avoidtried"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// UnaryClientHedge returns an interceptor that hedges unary calls of
// idempotent methods (The Tail at Scale; gRFC A6 hedging): the original
// attempt starts at once and, while no attempt has finished, another attempt
// starts after each hedge delay, up to WithMaxAttempts attempts in flight
// (default 3, including the original). The first OK wins; every other attempt
// is cancelled at once, so its server sees its context cancelled.
//
// Which calls are hedged: only methods that may run more than once, declared
// with WithIdempotentMethods or by their protobuf idempotency_level
// (IDEMPOTENT or NO_SIDE_EFFECTS), whose reply is a proto.Message. Every other
// call goes straight to the next interceptor, with no goroutine and no
// allocation. WithHedgingDisabled or WithMaxAttempts(1), also as per-call
// options, turn hedging off.
//
// The delay: WithHedgeDelay fixes it. By default it is adaptive (see
// WithAdaptiveHedgeDelay): the p95 of the method's recent latencies, clamped
// to [5ms, 1s], and a method is not hedged on time until it has 20 samples.
//
// Failures: an attempt failing with a non-fatal code (WithNonFatalCodes,
// default Unavailable) starts the next hedge at once, or after the server's
// grpc-retry-pushback-ms if it sent one. Any other code, or a pushback that
// says stop (negative or unparsable), cancels every attempt and is returned.
// If every attempt fails with a non-fatal code, the last error is returned.
//
// Budget: hedges spend from the budget of extra attempts (WithRetryBudget),
// of which attempts started by the delay may take only the hedge share
// (WithHedgeBudget: 10% of calls plus 5 per second), so that a fresh client
// hedges its first call and hedges never leave retries without room; a hedge
// the budget refuses never stops a later resend that the budget allows. A6
// throttling (WithRetryThrottling) sees every attempt's outcome. An exhausted
// budget only stops new attempts; attempts in flight run on.
//
// Deadlines: a service config timeout bounds the whole call, and
// WithPerAttemptTimeout each attempt; an attempt that runs out of its own time
// starts the next one at once.
//
// Each hedge gets its own reply message and its own header, trailer and peer
// storage; the winner's are copied to the caller's, so concurrent attempts
// never write to what the caller sees. The interceptor returns only once
// every attempt has returned, so that the caller may reuse req and reply at
// once. Hedges carry the grpc-previous-rpc-attempts metadata (1 for the first
// hedge, 2 for the second). A grpc.OnFinish option is called once, with the
// call's result.
//
// The cost: the original attempt runs on the caller's goroutine; the timer
// that would start the next one costs no goroutine until it fires, and is
// stopped when the call ends. A call answered before the delay runs no other
// goroutine.
//
// # Composition
//
// Chain the interceptors in this order, outermost first:
//
//	hedge -> retry -> dialer probe
//
// for example grpc.WithChainUnaryInterceptor(UnaryClientHedge(opts...),
// UnaryClientRetry(opts...), d.UnaryClientInterceptor()), with the same
// options for both. The hedging interceptor marks each attempt with a call
// option (never in the context, so RPCs nested inside an attempt are not
// mistaken for attempts): the retry interceptor sees it and passes the
// attempt through, so retries never multiply hedges (3 hedges x 3 retries = 9
// attempts), and the Dialer's interceptor probes the connection before each
// attempt's pick and tells which attempts never left the client. In the other
// order the retry interceptor owns the attempts and hedging passes every call
// through. Built this way, each interceptor has its own budget; DialOptions
// builds all of them over one. Disable grpc-go's built-in retry
// (grpc.WithDisableRetry) if a service config sets a retryPolicy: it runs
// beneath every interceptor.
//
// # Streams
//
// Streams are not hedged. Hedging a server-streaming call until its first
// response would mean: returning a wrapper stream at once, buffering the
// request to replay it to each hedge, racing the attempts' first RecvMsg in
// goroutines that the wrapper owns, committing to the first attempt that
// delivers a message or its headers (the caller's Header() must block on that
// race too), and discarding the losers' first messages. That works, but it
// puts a goroutine and a buffered message behind every stream, makes Header,
// Trailer and Context of the returned stream depend on a race that has not
// happened yet, and for long-lived streams the first message often waits for
// an event rather than for the server, so a latency quantile says little about
// when to hedge. Unary calls are where the tail is cut cleanly.
//
// Invalid options make every call fail with codes.InvalidArgument and the
// option's error text; the interceptor never panics.
func UnaryClientHedge(opts ...Option) grpc.UnaryClientInterceptor {
	cs := standaloneState(opts)
	cs.cfg.call.hedge = true // this interceptor hedges without being asked: that is what it is for
	return cs.unaryHedge
}

// unaryHedge is the hedging interceptor on its own: what it does not hedge
// goes to the next interceptor untouched.
func (cs *clientState) unaryHedge(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if cs.err != nil {
		return cs.err
	}
	if ownedAttempt(opts) {
		return invoker(ctx, method, req, reply, cc, opts...) // an outer interceptor owns the attempts
	}
	var p plan
	if err := cs.planFor(&p, method, opts); err != nil {
		return err
	}
	rm, ok := reply.(proto.Message) // each attempt needs its own reply
	if !ok || !p.hedges() {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	if p.callTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.callTimeout)
		defer cancel()
	}
	r := unaryRPC{method: method, req: req, reply: reply, cc: cc, invoker: invoker, opts: opts}
	return cs.hedge(ctx, &p, &r, rm)
}

// hedge runs one hedged call and reports its result to the caller's
// grpc.OnFinish options, once.
func (cs *clientState) hedge(ctx context.Context, p *plan, r *unaryRPC, reply proto.Message) error {
	if cs.cfg.avoidTried {
		ctx = avoidtried.NewContext(ctx) // the call's attempts avoid each other's backends
	}
	hc := hedgeCalls.Get().(*hedgeCall)
	hc.hedgeArgs = hedgeArgs{cs: cs, p: *p, ctx: ctx, unaryRPC: *r, reply: reply}
	hc.p.hedged = true
	err := hc.run()
	if h := cs.cfg.hooks.OnCallEnd; h != nil {
		h(ctx, CallEndEvent{Method: r.method, MethodLabel: p.method.label, Attempts: hc.started, Retries: hc.started - 1 - hc.hedges, Hedges: hc.hedges, RetryDelay: hc.waited, Err: err})
	}
	reusable := hc.orig.release() && hc.first.a.finished.Load() // else grpc may still write it
	for _, o := range r.opts {
		switch o := o.(type) {
		case grpc.OnFinishCallOption:
			o.OnFinish(err)
		case *grpc.OnFinishCallOption:
			o.OnFinish(err)
		}
	}
	if reusable && hc.started == 1 && !hc.timerBusy {
		// Nothing but the caller's goroutine ever ran for this call, the
		// timer was stopped before it fired, and the original's context was
		// never cancelled: nothing can touch hc any more, so it is reused,
		// timer and channel included.
		hc.recycle()
		hedgeCalls.Put(hc)
	}
	return err
}

// hedgeCalls keeps the hedgeCalls (and their timers) of calls answered
// before their delay, the common case, for reuse.
var hedgeCalls = sync.Pool{New: func() any { return new(hedgeCall) }}

// hedgeArgs is what a hedged call is made of.
type hedgeArgs struct {
	cs  *clientState
	p   plan
	ctx context.Context // the call's: the caller's, bounded by the call timeout
	unaryRPC
	reply proto.Message // the caller's: the original attempt writes into it directly
}

// hedgeCall is one hedged call. The caller's goroutine runs the original
// attempt itself. A timer, which costs no goroutine until it fires, starts
// each further attempt on the goroutine that runs the timer's function. Every
// goroutine running an attempt settles its outcome under mu, and runs at once
// the resend its failure may ask for.
type hedgeCall struct {
	hedgeArgs
	// replyType makes each hedge's reply. It is read before the original
	// attempt starts: reading it from reply later would race with the
	// original attempt's decoding.
	replyType protoreflect.MessageType

	start    int64         // nanotime of the original attempt's start
	delay    time.Duration // between attempts; 0: hedge on failures only
	adaptive bool

	first hedgeAttempt  // the original attempt: part of the call, no allocation of its own
	orig  originalCtx   // the original attempt's context
	timer *time.Timer   // created when first armed; only under mu
	wake  chan struct{} // made, under mu, when the caller has to wait

	// mu guards what follows, and holds the invariant that lets the caller
	// return: once over is set, no attempt starts and every attempt started
	// has been cancelled; the caller returns only when over is set and
	// running is 0, so no attempt can touch req, reply or the caller's
	// options any more, and the timer is stopped.
	mu       sync.Mutex
	attempts [maxAttemptsLimit]*hedgeAttempt
	started  int   // attempts started
	running  int   // attempts started and not yet settled
	fireAt   int64 // nanotime at which the armed timer starts the next attempt; 0: not armed
	// armed: the timer is set and has not fired or been stopped. timerBusy:
	// stopping or resetting it found it had fired, so its function may
	// still run: the call is then not reused.
	armed     bool
	timerBusy bool
	// fireHedge: the armed timer starts a hedge, which the budget's hedge
	// share must pay for; otherwise a resend the after-failure step has
	// already paid for (after the server's pushback).
	fireHedge bool
	noHedges  bool // the budget refused a hedge: no more delay hedges for this call
	hedges    int  // attempts the delay started
	// waited is the time resends waited for the server's pushback with
	// no attempt in flight.
	waited time.Duration
	over   bool
	result *hedgeAttempt // the attempt that decided the call; nil with ctxErr
	ctxErr error         // the caller gave up while nothing was running
}

// recycle clears what a call answered by its original attempt alone left
// in hc, keeping the timer and the original's channel. It clears only the
// references to the call's own values (context, messages, metadata, peer):
// every pointer written costs a write barrier while the GC runs, and the
// plan and the option buffer are overwritten by the next call anyway.
func (hc *hedgeCall) recycle() {
	hc.cs, hc.ctx, hc.unaryRPC, hc.reply = nil, nil, unaryRPC{}, nil
	hc.replyType, hc.delay, hc.adaptive = nil, 0, false
	hc.first.clear()
	hc.orig.clear()
	hc.attempts[0], hc.result, hc.ctxErr = nil, nil, nil
	hc.started, hc.running, hc.fireAt = 0, 0, 0
	hc.armed, hc.fireHedge, hc.noHedges, hc.over = false, false, false, false
	hc.hedges, hc.waited = 0, 0
}

// hedgeAttempt is one attempt and everything it writes. Only the goroutine
// running it touches it until it is settled.
type hedgeAttempt struct {
	// a is the attempt: its number (1 for the original), context, options
	// and what grpc reports. The original writes the caller's header,
	// trailer and peer options itself; a hedge writes a's, copied out if it
	// decides the call.
	a       attempt
	settled bool // it returned and its outcome was taken (under mu)
	reply   proto.Message
	err     error
	out     facts  // of a failure
	why     string // why its failure was not resent
	end     int64  // when it returned, for the adaptive delay
	// optBuf holds the caller's options this attempt keeps.
	optBuf [7]grpc.CallOption
}

// clear drops what the original attempt of a call held (see recycle).
func (at *hedgeAttempt) clear() {
	at.a.clear()
	at.reply, at.err, at.out, at.why = nil, nil, facts{}, ""
	at.settled = false
}

// run makes the attempts and returns the call's result.
func (hc *hedgeCall) run() error {
	hc.replyType = hc.reply.ProtoReflect().Type()
	hc.chooseDelay()
	hc.orig.reset(hc.ctx)
	hc.mu.Lock()
	at := hc.launchLocked(false)
	// The original's start is the call's: the hedge delay counts from it.
	hc.start = at.a.start
	hc.armHedgeLocked(hc.start)
	hc.mu.Unlock()
	if !hc.runAttempts(at, verdict{}) {
		hc.await()
	}
	return hc.finish()
}

// chooseDelay sets the delay between attempts: the fixed one, or the
// method's adaptive one (0 while it warms up: the call is then hedged on
// failures only).
func (hc *hedgeCall) chooseDelay() {
	hc.delay = hc.p.hedgeDelay
	if hc.delay == 0 {
		hc.adaptive = true
		w := hc.p.method.latencies()
		hc.delay = w.delay(&hc.cs.cfg)
		w.report(hc.cs.cfg.metrics, hc.p.method, hc.delay)
	}
}

// launchLocked starts attempt number hc.started+1, a hedge or a resend: its reply, its
// context, metadata and options, and its stamp. Stamping a little before the
// invoker runs is what the hand-off allows (earlier is only more cautious).
// The caller of launchLocked runs it.
func (hc *hedgeCall) launchLocked(hedge bool) *hedgeAttempt {
	n := hc.started + 1
	var at *hedgeAttempt
	spec := attemptSpec{plan: &hc.p, mode: ctxCancel, hedge: hedge}
	parent := hc.ctx
	if n == 1 {
		at = &hc.first
		at.reply = hc.reply
		parent, spec.mode = &hc.orig, ctxShared // endLocked cancels orig instead
	} else {
		at = &hedgeAttempt{reply: hc.replyType.New().Interface()}
		hc.cs.cfg.metrics.hedged(hc.p.method)
	}
	hc.attempts[n-1] = at
	hc.started++
	hc.running++
	opts, header := hc.callerOptions(at, n)
	spec.header = header
	hc.cs.begin(parent, &at.a, n, spec, opts)
	return at
}

// callerOptions returns the caller's options that attempt n keeps, and
// whether the caller asked for the header. grpc.OnFinish is left out (it is
// called once per call). The original attempt writes the caller's header,
// trailer and peer options itself; a hedge writes its own instead (see
// hedgeAttempt), so that concurrent attempts never write what the caller
// sees.
func (hc *hedgeCall) callerOptions(at *hedgeAttempt, n int) (opts []grpc.CallOption, header bool) {
	opts = at.optBuf[:0]
	for _, o := range hc.opts {
		switch o.(type) {
		case grpc.OnFinishCallOption, *grpc.OnFinishCallOption:
			continue
		case grpc.HeaderCallOption, *grpc.HeaderCallOption:
			if n > 1 {
				header = true
				continue
			}
		case grpc.PeerCallOption, *grpc.PeerCallOption, grpc.TrailerCallOption, *grpc.TrailerCallOption:
			if n > 1 {
				continue
			}
		}
		opts = append(opts, o)
	}
	return opts, header
}

// armHedgeLocked arms the timer for the next hedge, if the call hedges on
// time and attempts are left. now is a recent nanotime.
func (hc *hedgeCall) armHedgeLocked(now int64) {
	if hc.delay > 0 && !hc.noHedges && hc.started < hc.p.maxAttempts {
		hc.armLocked(now, hc.delay, true)
	}
}

// armLocked arms the timer to start the next attempt d after now, replacing
// what it was armed for. now is read before the timer is set, so the timer
// can never fire before fireAt: an earlier firing is a stale one.
func (hc *hedgeCall) armLocked(now int64, d time.Duration, hedge bool) {
	hc.fireAt, hc.fireHedge = now+int64(d), hedge
	switch {
	case hc.timer == nil:
		hc.timer = time.AfterFunc(d, hc.onTimer)
	case !hc.timer.Reset(d) && hc.armed:
		hc.timerBusy = true // it fired meanwhile: its function is stale
	}
	hc.armed = true
}

// disarmLocked stops the timer.
func (hc *hedgeCall) disarmLocked() {
	hc.fireAt = 0
	if hc.armed && !hc.timer.Stop() {
		hc.timerBusy = true
	}
	hc.armed = false
}

// onTimer starts the attempt the timer was armed for, on the timer's
// goroutine, and runs it there.
func (hc *hedgeCall) onTimer() {
	hc.mu.Lock()
	now := nanotime()
	if hc.over || hc.fireAt == 0 || now < hc.fireAt {
		hc.mu.Unlock() // stale: disarmed or re-armed since
		return
	}
	hc.fireAt, hc.armed = 0, false
	if hc.fireHedge && !hc.cs.mayHedge(&hc.p) {
		// Refused: no more hedges on time, but a failure may still be
		// resent, with the budget's own answer.
		hc.noHedges = true
		hc.mu.Unlock()
		return
	}
	hedge := hc.fireHedge
	if hedge {
		hc.hedges++
	}
	at := hc.launchLocked(hedge)
	hc.armHedgeLocked(now)
	hc.mu.Unlock()
	if h := hc.cs.cfg.hooks.OnHedge; h != nil && hedge {
		h(hc.ctx, HedgeEvent{Method: hc.method, MethodLabel: hc.p.method.label, Attempt: at.a.n, Delay: hc.delay})
	}
	hc.runAttempts(at, verdict{})
}

// runAttempts runs at, and then each resend its settling asks this
// goroutine to run at once. It reports whether the call is over with no
// attempt running, so that the caller need not wait for it.
func (hc *hedgeCall) runAttempts(at *hedgeAttempt, prev verdict) (finished bool) {
	for at != nil {
		prev.awaitRelease(at.a.ctx) // the attempt before died with its conn: pick a fresh one
		at.err = hc.cs.invoke(at.a.ctx, &hc.unaryRPC, at.reply, at.a.opts)
		if hc.adaptive {
			at.end = nanotime()
		}
		if at.err != nil {
			at.out = at.a.failed(at.err, hc.ctx, &hc.p, nil, false)
		}
		at, prev, finished = hc.settle(at)
	}
	return finished
}

// settle records the outcome of at, which has returned, and decides what
// follows: the call won, the call lost, a resend that the calling goroutine
// must run at once (with the verdict of at, to wait for its conn's release),
// or nothing yet.
func (hc *hedgeCall) settle(at *hedgeAttempt) (next *hedgeAttempt, v verdict, finished bool) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	hc.running--
	at.settled = true
	at.a.end()
	switch {
	case hc.over:
		// Decided meanwhile; at was cancelled and has now returned.
	case at.err == nil:
		hc.wonLocked(at)
	default:
		next = hc.failedLocked(at)
	}
	finished = hc.over && hc.running == 0
	if finished && hc.wake != nil {
		select {
		case hc.wake <- struct{}{}:
		default:
		}
	}
	return next, at.out.verdict, finished
}

// wonLocked ends the call with the success of at: the others are cancelled.
func (hc *hedgeCall) wonLocked(at *hedgeAttempt) {
	hc.endLocked(at)
	hc.cs.succeeded()
	if at.a.n > 1 {
		hc.cs.cfg.metrics.hedgeWon(hc.p.method)
	}
	if hc.adaptive {
		hc.p.method.latencies().record(time.Duration(at.end-hc.start), at.a.n > 1, hc.cs.cfg.hedgeQuantile)
	}
}

// failedLocked takes the after-failure step for at. It returns the resend to
// run at once, if any; a resend after a wait arms the timer. The call ends
// with at's error if the step says the failure is final, or if nothing is
// left that could still succeed: no attempt running and no resend pending.
func (hc *hedgeCall) failedLocked(at *hedgeAttempt) *hedgeAttempt {
	d := hc.cs.afterFailure(hc.ctx, &hc.p, at.out, hc.started)
	at.why = d.why
	switch {
	case d.final:
		hc.endLocked(at)
	case d.resend && d.wait <= 0:
		next := hc.launchLocked(false)
		hc.armHedgeLocked(nanotime())
		return next
	case d.resend:
		if hc.running == 0 {
			hc.waited += d.wait
		}
		hc.armLocked(nanotime(), d.wait, false) // the server's pushback: the resend waits for it
	case hc.running == 0 && (hc.fireAt == 0 || hc.fireHedge):
		hc.endLocked(at) // nothing left but hedges, which could not have more luck
	}
	return nil
}

// endLocked decides the call with at (nil when the caller gave up): every
// other attempt is cancelled and the timer stopped.
func (hc *hedgeCall) endLocked(at *hedgeAttempt) {
	hc.over, hc.result = true, at
	hc.disarmLocked()
	for _, o := range hc.attempts[:hc.started] {
		switch {
		case o.settled:
		case o.a.n == 1:
			hc.orig.cancel(context.Canceled) // the winner has returned; the original has not
		default:
			o.a.cancel()
		}
	}
}

// await returns once the call is over and no attempt runs. If the caller
// gives up while nothing runs (a resend waiting for the server's pushback),
// the call ends with the caller's error.
func (hc *hedgeCall) await() {
	done := hc.ctx.Done()
	for {
		hc.mu.Lock()
		if hc.over && hc.running == 0 {
			hc.mu.Unlock()
			return
		}
		if hc.wake == nil {
			hc.wake = make(chan struct{}, 1)
		}
		wake := hc.wake
		hc.mu.Unlock()
		select {
		case <-wake:
		case <-done:
			done = nil // the attempts see it too; wait for them to return
			hc.mu.Lock()
			if !hc.over {
				hc.ctxErr = status.FromContextError(hc.ctx.Err()).Err()
				hc.endLocked(nil)
			}
			hc.mu.Unlock()
		}
	}
}

// finish returns the call's result once no attempt runs: the winner's reply,
// header, trailer and peer are copied to the caller's (the original attempt
// wrote its own there already).
func (hc *hedgeCall) finish() error {
	at := hc.result
	if at == nil {
		return hc.ctxErr
	}
	if at.a.n > 1 {
		if at.err == nil {
			proto.Reset(hc.reply)
			proto.Merge(hc.reply, at.reply)
		}
		hc.copyOut(at)
	}
	if at.err != nil {
		return notResentError(at.err, at.why)
	}
	return nil
}

// copyOut gives the caller's header, trailer and peer options the values of
// the hedge that decided the call, once grpc is done with them.
func (hc *hedgeCall) copyOut(at *hedgeAttempt) {
	var out attempt // zero: nothing grpc wrote can be read
	src := &out
	if at.a.finished.Load() {
		src = &at.a
	}
	for _, o := range hc.opts {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			*o.HeaderAddr = src.header
		case *grpc.HeaderCallOption:
			*o.HeaderAddr = src.header
		case grpc.TrailerCallOption:
			*o.TrailerAddr = src.trailer
		case *grpc.TrailerCallOption:
			*o.TrailerAddr = src.trailer
		case grpc.PeerCallOption:
			*o.PeerAddr = src.peer
		case *grpc.PeerCallOption:
			*o.PeerAddr = src.peer
		}
	}
}

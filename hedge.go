package grpcguard

import (
	"context"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
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
// Budget: hedges of one interceptor are capped at WithHedgeBudget (default
// 0.1) times its calls over the retry budget's window (default 10s). An
// exhausted budget only stops new hedges; attempts in flight run on.
//
// Each attempt gets its own reply message and its own header, trailer and
// peer storage; the winner's are copied to the caller's, so concurrent
// attempts never write to what the caller sees. Hedges carry the
// grpc-previous-rpc-attempts metadata (1 for the first hedge, 2 for the
// second). A grpc.OnFinish option is called once, with the call's result.
//
// # Composition
//
// Chain the interceptors in this order, outermost first:
//
//	hedge -> retry -> dialer probe
//
// for example grpc.WithChainUnaryInterceptor(UnaryClientHedge(...),
// UnaryClientRetry(...), d.UnaryClientInterceptor()). The hedging interceptor
// puts an attempt marker in each attempt's context: the retry interceptor sees
// it and passes the attempt through, so retries never multiply hedges (3
// hedges x 3 retries = 9 attempts), and the Dialer's interceptor probes the
// connection before each attempt's pick and tells which attempts never left
// the client. In the other order the retry interceptor owns the attempts and
// hedging passes every call through. Disable grpc-go's built-in retry
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
	cfg, err := newConfig(opts)
	if err != nil {
		st := status.Error(codes.InvalidArgument, err.Error())
		return func(context.Context, string, any, any, *grpc.ClientConn, grpc.UnaryInvoker, ...grpc.CallOption) error {
			return st
		}
	}
	window := cfg.budget.window
	if window <= 0 {
		window = DefaultBudgetWindow // A6 throttling has no window
	}
	h := &hedger{
		cfg:    &cfg,
		idem:   &idempotencyCache{},
		budget: newBudget(budgetConfig{ratio: cfg.hedgeBudgetRatio, window: window}),
		resend: newBudget(cfg.budget),
	}
	return h.intercept
}

// hedger is the state of one hedging interceptor.
type hedger struct {
	cfg    *config
	idem   *idempotencyCache
	budget *budget // attempts started by the hedge delay
	// resend pays for attempts started because another failed with a
	// non-fatal code: they are retries, and a burst of failures must not
	// exhaust the hedge budget (which has no floor) and fail idempotent calls
	// that a retry would have saved. It is sized as the retry budget.
	resend *budget
	delays hedgeDelays
}

func (h *hedger) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	c, err := h.cfg.forMethod(method).withCallOptions(opts)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	// Hedging runs a call several times at once, so it is only for methods
	// that may run more than once. An attempt marker already in ctx means an
	// outer interceptor owns the attempts: hedging under it would multiply
	// them.
	if c.hedgeDisabled || c.maxAttempts < 2 || ownedAttempt(opts) ||
		(c.hedgeOnlyByPolicy && !c.hedgeEnabled) ||
		!(c.policyRetryable || (idempotency{declared: c.idempotent, cache: h.idem}).of(method)) {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	// Each attempt needs its own reply; only proto messages can be made anew.
	rm, ok := reply.(proto.Message)
	if !ok {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	hc := &hedgeCall{
		h: h, c: c, ctx: ctx, method: method, req: req, reply: rm,
		cc: cc, invoker: invoker, opts: opts,
		results: make(chan *hedgeAttempt, c.maxAttempts),
	}
	err = hc.run()
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.OnFinishCallOption:
			o.OnFinish(err)
		case *grpc.OnFinishCallOption:
			o.OnFinish(err)
		}
	}
	return err
}

// hedgeCall is one hedged call.
type hedgeCall struct {
	h       *hedger
	c       *config
	ctx     context.Context
	method  string
	req     any
	reply   proto.Message
	cc      *grpc.ClientConn
	invoker grpc.UnaryInvoker
	opts    []grpc.CallOption

	start    int64 // nanotime of the original attempt's start
	attempts []*hedgeAttempt
	results  chan *hedgeAttempt // buffered for every attempt: senders never block
}

// hedgeAttempt is one attempt and everything it writes. Only its goroutine
// touches it until it is received from hedgeCall.results.
type hedgeAttempt struct {
	a       attempt // the hand-off to the Dialer's interceptor
	n       int     // 0 for the original
	cancel  context.CancelFunc
	reply   proto.Message
	header  metadata.MD
	trailer metadata.MD
	peer    peer.Peer
	err     error
	end     int64
}

// run makes the attempts and returns the call's result.
func (hc *hedgeCall) run() error {
	h, c := hc.h, hc.c
	h.budget.call()
	h.resend.call()
	win := h.delays.get(hc.method)
	delay := c.hedgeDelay
	adaptive := delay == 0
	if adaptive {
		delay = win.delay(c) // 0 while warming up: hedge on failures only
	}
	win.report(c.metrics, hc.method, delay)

	hc.start = nanotime()
	hc.launch()
	defer hc.cancelAll()
	var (
		timer   *time.Timer
		timerC  <-chan time.Time
		running = 1
		stopped bool // the budget refused a hedge: no more for this call
		last    *hedgeAttempt
	)
	arm := func(d time.Duration) {
		if d <= 0 || len(hc.attempts) >= c.maxAttempts || stopped {
			timerC = nil
			return
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		timerC = timer.C
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// hedge starts the next attempt if the budget allows. failed is the
	// attempt whose non-fatal failure asks for it, nil when the delay does:
	// such a resend is also a retry, paid for and counted as one.
	var failed *hedgeAttempt
	hedge := func() bool {
		if stopped || len(hc.attempts) >= c.maxAttempts {
			return false
		}
		b := h.budget
		if failed != nil {
			b = h.resend
		}
		if !b.allow() {
			stopped = true
			if failed != nil {
				c.metrics.retryThrottledFor(hc.method)
			} else {
				c.metrics.hedgeThrottledFor(hc.method)
			}
			return false
		}
		if failed != nil {
			c.metrics.retried(hc.method, status.Code(failed.err), false)
			failed = nil
		}
		c.metrics.hedged(hc.method)
		hc.launch()
		running++
		return true
	}
	arm(delay)
	for {
		select {
		case at := <-hc.results:
			running--
			if at.err == nil {
				hc.cancelAll() // losers stop now, before the copy
				if at.n > 0 {
					c.metrics.hedgeWon(hc.method)
				}
				if adaptive {
					win.record(time.Duration(at.end-hc.start), at.n > 0, c.hedgeQuantile)
				}
				proto.Reset(hc.reply)
				proto.Merge(hc.reply, at.reply)
				hc.copyOut(at)
				return nil
			}
			last = at
			wait, present, stop := pushback(at.trailer)
			if stop || !c.nonFatal.has(status.Code(at.err)) {
				hc.copyOut(at)
				return at.err
			}
			failed = at
			switch {
			case present && wait > 0:
				arm(wait) // the resend waits for the server's word
			case hedge():
				arm(delay)
			}
			if stopped || len(hc.attempts) >= c.maxAttempts {
				timerC = nil // nothing left to start
			}
			if running == 0 && timerC == nil {
				hc.copyOut(last)
				return last.err
			}
		case <-timerC:
			timerC = nil
			if hedge() {
				arm(delay)
			} else if running == 0 {
				// Only after a pushback: the budget refused the hedge
				// it was holding.
				hc.copyOut(last)
				return last.err
			}
		case <-hc.ctx.Done():
			return status.FromContextError(hc.ctx.Err()).Err()
		}
	}
}

// launch starts attempt number len(hc.attempts) in its own goroutine.
func (hc *hedgeCall) launch() {
	n := len(hc.attempts)
	at := &hedgeAttempt{n: n, reply: hc.reply.ProtoReflect().New().Interface()}
	ctx, cancel := context.WithCancel(hc.ctx)
	at.cancel = cancel
	if n > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, "grpc-previous-rpc-attempts", strconv.Itoa(n))
	}
	opts := hc.attemptOptions(at)
	hc.attempts = append(hc.attempts, at)
	go func() {
		at.err = hc.invoker(ctx, hc.method, hc.req, at.reply, hc.cc, at.a.begin(opts)...)
		at.end = nanotime()
		hc.results <- at
	}()
}

// attemptOptions returns the call's options with every option that writes
// through a pointer replaced by one writing into at, plus a trailer option
// for the pushback. grpc.OnFinish is left out: it is called once per call.
func (hc *hedgeCall) attemptOptions(at *hedgeAttempt) []grpc.CallOption {
	opts := make([]grpc.CallOption, 0, len(hc.opts)+4)
	var header, peerOpt bool
	for _, o := range hc.opts {
		switch o.(type) {
		case grpc.HeaderCallOption, *grpc.HeaderCallOption:
			header = true
		case grpc.PeerCallOption, *grpc.PeerCallOption:
			peerOpt = true
		case grpc.TrailerCallOption, *grpc.TrailerCallOption,
			grpc.OnFinishCallOption, *grpc.OnFinishCallOption:
		default:
			opts = append(opts, o)
		}
	}
	opts = append(opts, grpc.Trailer(&at.trailer), attemptOwner{})
	if header {
		opts = append(opts, grpc.Header(&at.header))
	}
	if peerOpt {
		opts = append(opts, grpc.Peer(&at.peer))
	}
	return opts
}

// copyOut gives the caller's header, trailer and peer options the values of
// the attempt that decided the call.
func (hc *hedgeCall) copyOut(at *hedgeAttempt) {
	for _, o := range hc.opts {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			*o.HeaderAddr = at.header
		case *grpc.HeaderCallOption:
			*o.HeaderAddr = at.header
		case grpc.TrailerCallOption:
			*o.TrailerAddr = at.trailer
		case *grpc.TrailerCallOption:
			*o.TrailerAddr = at.trailer
		case grpc.PeerCallOption:
			*o.PeerAddr = at.peer
		case *grpc.PeerCallOption:
			*o.PeerAddr = at.peer
		}
	}
}

// cancelAll cancels every attempt; finished ones are unaffected.
func (hc *hedgeCall) cancelAll() {
	for _, at := range hc.attempts {
		at.cancel()
	}
}

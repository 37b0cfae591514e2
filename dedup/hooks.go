package dedup

import (
	"context"

	"github.com/grpcguard/grpcguard/internal/hookjoin"
)

// Hooks are functions the interceptor and the dedup service call as they
// decide a call, so that users can wire them into their own telemetry: the
// same events that Metrics counts, with the method. Every field may be nil;
// WithHooks installs them.
//
// They are called synchronously on the call's goroutine, never under a lock
// of the package's. They must be quick, must not block and must not keep
// the event's Err beyond the call: the call waits for them. A Hooks field
// that is nil costs one comparison.
type Hooks struct {
	// OnOutcome is called when a call with a request id is decided: where
	// Metrics counts executions, answers, waits, conflicts, refusals and
	// releases.
	OnOutcome func(ctx context.Context, e OutcomeEvent)
	// OnStoreError is called when a Store operation fails, where Metrics
	// counts store errors.
	OnStoreError func(ctx context.Context, e StoreErrorEvent)
}

// What became of a call with a request id (OutcomeEvent.Outcome). They
// match the Metrics series of the same names.
const (
	// OutcomeExecuted: the handler ran under a new claim
	// (grpcguard_dedup_executions_total).
	OutcomeExecuted = "executed"
	// OutcomeAnswered: a duplicate answered from a stored outcome, the
	// handler not run (grpcguard_dedup_answered_total).
	OutcomeAnswered = "answered"
	// OutcomeWaited: a duplicate that arrived while its id ran, answered
	// once it finished (grpcguard_dedup_waited_total).
	OutcomeWaited = "waited"
	// OutcomeConflict: the id was used with a different request, refused
	// with AlreadyExists (grpcguard_dedup_conflicts_total).
	OutcomeConflict = "conflict"
	// OutcomeRefused: a resend refused because its first attempt may have
	// run where this server cannot see (grpcguard_dedup_refused_total).
	OutcomeRefused = "refused"
	// OutcomeReleased: a claim released without an outcome (NotExecuted,
	// or a panic), so that a resend runs again
	// (grpcguard_dedup_released_total).
	OutcomeReleased = "released"
)

// The Store operations (StoreErrorEvent.Op), as the op label of
// grpcguard_dedup_store_errors_total.
const (
	StoreOpClaim   = "claim"   // Store.Claim, or RetentionChecker.CheckRetention before a claim
	StoreOpWait    = "wait"    // Store.Wait
	StoreOpFinish  = "finish"  // Store.Finish
	StoreOpRelease = "release" // Store.Release
)

// OutcomeEvent is a call with a request id decided.
type OutcomeEvent struct {
	// Method is the call's full method, /service/method; for the dedup
	// service's own answers, LookupMethod.
	Method  string
	Outcome string // one of the Outcome constants
}

// StoreErrorEvent is a Store operation that failed.
type StoreErrorEvent struct {
	Method string // as in OutcomeEvent
	Op     string // one of the StoreOp constants
	Err    error  // the Store's error
	// FailOpen: the claim failed and, under WithFailOpen, the call runs
	// without deduplication; a resend of it may run it again.
	FailOpen bool
}

// WithHooks adds hooks. Several WithHooks (and WithLogger) add up: each
// event goes to every hook set for it, in the order given.
func WithHooks(h Hooks) Option {
	return Option{func(c *config) error {
		c.hooks = c.hooks.join(h)
		return nil
	}}
}

// join returns the hooks of h and then of o.
func (h Hooks) join(o Hooks) Hooks {
	return Hooks{
		OnOutcome:    hookjoin.Ctx(h.OnOutcome, o.OnOutcome),
		OnStoreError: hookjoin.Ctx(h.OnStoreError, o.OnStoreError),
	}
}

// outcome tells the hooks that a call of method came to o. The caller
// counts it in Metrics beside.
func (d *deduper) outcome(ctx context.Context, method, o string) {
	if h := d.cfg.hooks.OnOutcome; h != nil {
		h(ctx, OutcomeEvent{Method: method, Outcome: o})
	}
}

// storeFailed counts a failed Store operation op of a call of method and
// tells the hooks. failOpen: the call runs without deduplication.
func (d *deduper) storeFailed(ctx context.Context, method string, op storeOp, err error, failOpen bool) {
	d.cfg.metrics.storeErr(op)
	if h := d.cfg.hooks.OnStoreError; h != nil {
		h(ctx, StoreErrorEvent{Method: method, Op: op.String(), Err: err, FailOpen: failOpen})
	}
}

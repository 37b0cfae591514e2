package grpcguard

import (
	"time"

	"github.com/grpcguard/grpcguard/internal/serviceconfig"
)

// How a gRFC A6 service config (WithServiceConfig) changes the plan of a
// call. internal/serviceconfig parses and validates the JSON; what follows
// gives its per-method policies their meaning for grpcguard's plans.

// hedgeAllAtOnce stands for hedgingDelay "0s", which gRFC A6 defines as
// "send all maxAttempts attempts at once". The plan's hedgeDelay 0 already
// means "adaptive", so a zero delay is represented by the smallest positive
// fixed delay, which is the same thing in practice.
const hedgeAllAtOnce = time.Nanosecond

// serviceConfig holds the per-method policies of a gRFC A6 service config
// (Methods, keyed as grpc-go keys them: "/svc/method", "/svc/" and "").
// It is immutable.
type serviceConfig serviceconfig.Config

// methodPolicy is one validated methodConfig entry.
type methodPolicy serviceconfig.MethodPolicy

// lookup returns the policy for fullMethod with grpc-go's precedence: the
// exact "/svc/method", then "/svc/", then ""; nil when none matches.
func (sc *serviceConfig) lookup(fullMethod string) *methodPolicy {
	return (*methodPolicy)((*serviceconfig.Config)(sc).Lookup(fullMethod))
}

// applyTo overrides the plan p of a method with the policy p covers, and
// reports whether the policy declares the method safe to run more than once
// (either policy does, as a retryPolicy does in grpc-go).
func (pol *methodPolicy) applyTo(p *plan) (retryable bool) {
	if pol.HasTimeout && pol.Timeout >= 0 {
		// grpc-go applies a zero timeout as an already expired deadline;
		// callTimeout 0 would mean "none".
		p.callTimeout = max(pol.Timeout, time.Nanosecond)
	}
	if r := pol.Retry; r != nil {
		p.maxAttempts = r.MaxAttempts
		p.initialBackoff, p.maxBackoff, p.backoffMultiplier = r.InitialBackoff, r.MaxBackoff, r.Multiplier
		p.backoffFunc, p.a6Jitter = nil, true
		if r.PerAttemptRecvTimeout > 0 {
			// Its meaning is WithPerAttemptTimeout's: see WithServiceConfig.
			p.perAttemptTimeout = r.PerAttemptRecvTimeout
		}
		p.retryable = codeSet(r.Retryable)
		p.commitAtHeaders = true
		p.hedgeDisabled = true // A6: a method has a retry or a hedging policy, not both
		retryable = true
	}
	if h := pol.Hedge; h != nil {
		p.hedge = true
		p.maxAttempts = h.MaxAttempts
		p.hedgeDelay = h.Delay
		if p.hedgeDelay == 0 {
			p.hedgeDelay = hedgeAllAtOnce
		}
		p.nonFatal = codeSet(h.NonFatal)
		p.retryDisabled = true
		retryable = true
	}
	return retryable
}

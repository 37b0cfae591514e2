package grpcguard

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// plan is one call's settings, resolved once before its first attempt, and
// the same way by every interceptor that makes attempts (unary retry, stream
// retry, hedging), from three sources applied in order:
//
//  1. the client's options (CallOptions given to a constructor set the
//     defaults of every call);
//  2. the service config's methodConfig for the method (gRFC A6 retryPolicy,
//     hedgingPolicy, timeout), which overrides them for that method;
//  3. the call's own CallOptions, which override both for that call.
//
// Steps 1 and 2 and the method's idempotency depend only on the method: they
// are computed once per method (methodInfo.base). A call copies that base and
// applies its own options to the copy, which allocates nothing.
type plan struct {
	callSettings
	// callTimeout, when positive, bounds the whole call (service config
	// "timeout"); an earlier caller deadline wins.
	callTimeout time.Duration
	// idempotent: the method may run more than once, as declared by the
	// user (WithIdempotentMethods, a service config policy) or by its
	// protobuf descriptor.
	idempotent bool
	// commitAtHeaders: a service config retryPolicy covers the method, and
	// like grpc-go such a call is not retried once response headers arrived.
	commitAtHeaders bool
	// hedged is set for a call the hedging path runs: its failures are
	// judged by the non-fatal codes and resent at once (gRFC A6).
	hedged bool
	method *methodInfo
	// fullMethod is the call's method as the caller named it.
	fullMethod string
	// dedup, when set, is where a unary call records the attempts that may
	// have reached a deduplicating server (see dedupCover): only unary
	// calls that are retried may rely on it; streams and hedges never do.
	dedup *dedupCover
}

// planFor resolves the plan of one call into p. An invalid CallOption among
// opts is returned as an InvalidArgument status, before anything is sent.
func (cs *clientState) planFor(p *plan, method string, opts []grpc.CallOption) error {
	cs.methods.plan(p, method, staticMethod(opts))
	p.fullMethod = method
	for _, o := range opts {
		co, ok := o.(CallOption)
		if !ok || co.apply == nil {
			continue
		}
		var err error
		if p.callSettings, err = co.apply(p.callSettings); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	return nil
}

// basePlan writes the plan of fullMethod before any call's options into p:
// the client's options, then the service config's policy for the method.
// described reports that the method's descriptor declares it idempotent.
func (cs *clientState) basePlan(p *plan, mi *methodInfo, fullMethod string, described bool) {
	*p = plan{callSettings: cs.cfg.call, method: mi}
	policyRetryable := false
	if sc := cs.cfg.serviceConfig; sc != nil {
		if pol := sc.lookup(fullMethod); pol != nil {
			policyRetryable = pol.applyTo(p)
		}
	}
	p.idempotent = described || policyRetryable || cs.cfg.idempotent.contains(fullMethod)
}

// hedges reports whether the call is hedged, where a hedging interceptor
// runs: hedging was asked for, is not turned off, and the method may run
// more than once.
func (p *plan) hedges() bool {
	return p.hedge && !p.hedgeDisabled && p.maxAttempts > 1 && p.idempotent
}

// retries reports whether the call may be retried at all.
func (p *plan) retries() bool { return !p.retryDisabled && p.maxAttempts > 1 }

// resendable is the set of codes after which an attempt may be sent again:
// the non-fatal codes of a hedged call, the retryable codes of any other.
func (p *plan) resendable() codeSet {
	if p.hedged {
		return p.nonFatal
	}
	return p.retryable
}

package grpcguard

import (
	"context"
	"github.com/grpcguard/grpcguard/internal/hookjoin"
	"net"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// Hooks are functions grpcguard calls when it acts, so that users can wire
// it into their own telemetry: a retry scheduled, a hedge sent, a failed
// attempt not sent again and why, a stale connection found, a connection
// retired. Every field may be nil; WithHooks installs them.
//
// They are called synchronously, on the goroutine where the event happens
// (the caller's, a hedge timer's, the Dialer's sweep or a connection's
// reader), never under a lock of grpcguard's. They must be quick, must not
// block and must not keep the event's Err beyond the call: the call waits
// for them. A Hooks field that is nil costs one comparison.
type Hooks struct {
	// OnAttempt is called as each attempt of a call that grpcguard sends
	// attempts for starts (the original included), with the attempt's
	// context: the call's, with its span if it has one.
	OnAttempt func(ctx context.Context, e AttemptEvent)
	// OnRetry is called when a failed attempt is to be sent again, before
	// the wait.
	OnRetry func(ctx context.Context, e RetryEvent)
	// OnHedge is called when the hedge delay starts another attempt.
	OnHedge func(ctx context.Context, e HedgeEvent)
	// OnNotResent is called when an attempt failed in a way the call would
	// resend (a retryable code, or its own timeout), and it is not sent
	// again: Reason says why.
	OnNotResent func(ctx context.Context, e NotResentEvent)
	// OnCallEnd is called once as a call that grpcguard sent attempts for
	// (a retried or hedged call, a retried stream) ends.
	OnCallEnd func(ctx context.Context, e CallEndEvent)
	// OnStaleConn is called when the Dialer finds a connection stale.
	OnStaleConn func(e StaleConnEvent)
	// OnConnRetired is called when the Dialer retires an idle connection.
	OnConnRetired func(e ConnRetiredEvent)
	// OnIdleHorizon is called when the idle horizon the Dialer retires
	// connections at, or the TCP keepalive it sets, changes.
	OnIdleHorizon func(e IdleHorizonEvent)
	// OnDialError is called when the Dialer fails to open a connection,
	// through an HTTP CONNECT proxy included.
	OnDialError func(e DialErrorEvent)
}

// Why a failed attempt is sent again (RetryEvent.Reason).
const (
	// ReasonNeverLeft: no byte of the attempt left the client, a fact
	// from its connection or from grpc.
	ReasonNeverLeft = "NEVER_LEFT"
	// ReasonIdempotent: the method may run more than once.
	ReasonIdempotent = "IDEMPOTENT"
	// ReasonDeduplicated: the server runs the call's request id once.
	ReasonDeduplicated = "DEDUPLICATED"
)

// Why a failed attempt that the call would resend is not sent again
// (NotResentEvent.Reason, and the reason of the call's final error; see
// NotResentReason). They are stable: match them, not the text.
const (
	// ReasonMayHaveRun: the attempt may have reached the server and run,
	// and the method is not idempotent: a resend could run it twice.
	ReasonMayHaveRun = "MAY_HAVE_RUN"
	// ReasonAttemptsExhausted: the call used all its attempts.
	ReasonAttemptsExhausted = "ATTEMPTS_EXHAUSTED"
	// ReasonBudgetExhausted: the budget of extra attempts is spent.
	ReasonBudgetExhausted = "BUDGET_EXHAUSTED"
	// ReasonNoTimeLeft: the wait before the resend would outlast the
	// caller's deadline.
	ReasonNoTimeLeft = "NO_TIME_LEFT"
	// ReasonCommitted: the call can no longer be replayed (a stream
	// delivered a message, or response headers arrived under a service
	// config retryPolicy).
	ReasonCommitted = "COMMITTED"
	// ReasonServerPushback: the server asked not to retry
	// (grpc-retry-pushback-ms).
	ReasonServerPushback = "SERVER_PUSHBACK"
	// ReasonDedupUnconfirmed: a resend would rely on the server's
	// deduplication, which the client learned from the server's responses,
	// and the dedup service did not confirm it for the call (the replica
	// reached has none, or did not answer): the call may have run.
	ReasonDedupUnconfirmed = "DEDUP_UNCONFIRMED"
)

// AttemptEvent is an attempt starting.
type AttemptEvent struct {
	Method string // the full method, /service/method
	// MethodLabel is Method where grpcguard knows the method (registered,
	// called with grpc.StaticMethod, or named in an option or the service
	// config), "other" otherwise: a label that cannot grow without bound,
	// as gRFC A66's grpc.method. The same in every event.
	MethodLabel string
	Attempt     int  // 1 for the original
	Hedge       bool // started by the hedge delay
	Stream      bool
}

// RetryEvent is a failed attempt to be sent again.
type RetryEvent struct {
	Method      string
	MethodLabel string
	Attempt     int   // the failed attempt's number
	Err         error // the failed attempt's error
	Peer        net.Addr
	Reason      string        // ReasonNeverLeft, ReasonIdempotent or ReasonDeduplicated
	Wait        time.Duration // before the next attempt
}

// HedgeEvent is a hedge started by the delay.
type HedgeEvent struct {
	Method      string
	MethodLabel string
	Attempt     int           // the hedge's number: 2 for the first hedge
	Delay       time.Duration // the hedge delay in force
}

// NotResentEvent is a failed attempt that is not sent again.
type NotResentEvent struct {
	Method      string
	MethodLabel string
	Attempt     int
	Err         error
	Peer        net.Addr // the server the attempt reached, nil when unknown
	Reason      string   // one of the Reason constants for it
}

// CallEndEvent sums up a call that grpcguard sent attempts for (gRFC A96's
// per-call values).
type CallEndEvent struct {
	Method      string
	MethodLabel string
	Attempts    int // sent, the original included
	Retries     int // attempts sent after a failure
	Hedges      int // attempts started by the hedge delay
	// RetryDelay is the time the call waited with no attempt in flight.
	RetryDelay time.Duration
	Err        error // the call's result
}

// StaleConnEvent is a connection found stale.
type StaleConnEvent struct {
	Local, Remote net.Addr
	Reason        StaleReason
	Idle          time.Duration // since the connection last carried data
}

// ConnRetiredEvent is an idle connection the Dialer closed.
type ConnRetiredEvent struct {
	Local, Remote net.Addr
	// Learned: retired at the learned idle horizon; otherwise at
	// WithMaxIdle.
	Learned bool
}

// IdleHorizonEvent is a change of the idle horizon or of the keepalive.
type IdleHorizonEvent struct {
	// Horizon is the idle age at which connections carrying nothing are
	// retired now; 0: never.
	Horizon time.Duration
	// KeepAlive is the TCP keepalive idle in force.
	KeepAlive time.Duration
}

// DialErrorEvent is a connection the Dialer could not open.
type DialErrorEvent struct {
	Addr string
	// Proxy is the host of the HTTP CONNECT proxy the dial went through,
	// as its URL gives it (host or host:port), "" for a direct dial: when set, Err is the proxy's (it
	// could not be reached, or did not open the tunnel). It never holds the
	// proxy URL's credentials.
	Proxy string
	Err   error
}

// WithHooks adds hooks to the client's. Several WithHooks add up: each
// event goes to every hook set for it, in the order given.
func WithHooks(h Hooks) ClientOption {
	return clientOption(func(c *config) error {
		c.hooks = c.hooks.join(h)
		return nil
	})
}

// join returns the hooks of h and then of o.
func (h Hooks) join(o Hooks) Hooks {
	return Hooks{
		OnAttempt:     hookjoin.Ctx(h.OnAttempt, o.OnAttempt),
		OnRetry:       hookjoin.Ctx(h.OnRetry, o.OnRetry),
		OnHedge:       hookjoin.Ctx(h.OnHedge, o.OnHedge),
		OnNotResent:   hookjoin.Ctx(h.OnNotResent, o.OnNotResent),
		OnCallEnd:     hookjoin.Ctx(h.OnCallEnd, o.OnCallEnd),
		OnStaleConn:   hookjoin.Plain(h.OnStaleConn, o.OnStaleConn),
		OnConnRetired: hookjoin.Plain(h.OnConnRetired, o.OnConnRetired),
		OnIdleHorizon: hookjoin.Plain(h.OnIdleHorizon, o.OnIdleHorizon),
		OnDialError:   hookjoin.Plain(h.OnDialError, o.OnDialError),
	}
}

// ErrorDomain is the domain of the errdetails.ErrorInfo that grpcguard adds
// to the status of a call it did not send again.
const ErrorDomain = "grpcguard"

// notResentError returns err, the final error of a call that was not sent
// again for why (one of the Reason constants), with why in its status
// details as an errdetails.ErrorInfo of ErrorDomain. Without a reason, or
// when err is no status, err is returned as it is.
func notResentError(err error, why string) error {
	if why == "" {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	withWhy, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: why, Domain: ErrorDomain})
	if derr != nil {
		return err
	}
	return withWhy.Err()
}

// NotResentReason reports why grpcguard did not send a failed call again:
// one of the Reason constants (ReasonMayHaveRun: the call may have run and
// is not idempotent), read from the status details of the call's error. ok
// is false when err carries none: the call succeeded, failed in a way it
// does not resend, or its attempts were not grpcguard's.
func NotResentReason(err error) (reason string, ok bool) {
	st, isStatus := status.FromError(err)
	if !isStatus {
		return "", false
	}
	for _, d := range st.Details() {
		if info, isInfo := d.(*errdetails.ErrorInfo); isInfo && info.GetDomain() == ErrorDomain {
			return info.GetReason(), true
		}
	}
	return "", false
}

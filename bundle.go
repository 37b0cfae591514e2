package grpcguard

import (
	"context"
	"net"

	"github.com/grpcguard/grpcguard/internal/avoidtried"
	"github.com/grpcguard/grpcguard/internal/dialroute"
	"google.golang.org/grpc"
)

type dialFunc = func(context.Context, string) (net.Conn, error)

// DialOptions returns everything grpcguard adds to a client, for
// grpc.NewClient(target, append(opts, creds)...):
//
//   - a Dialer (grpc.WithContextDialer) whose connections are probed and
//     refuse to write when stale;
//   - one unary interceptor that hedges the calls that ask for it
//     (WithHedgeDelay or WithAdaptiveHedgeDelay, given here or to one call,
//     or a service config hedgingPolicy) and retries the others, and one
//     stream interceptor that retries streams; each of their attempts,
//     original, retry or hedge, runs the Dialer's check before the pick, so
//     that it is probed and the retry can tell whether it left the client.
//     They share one budget for every extra attempt and one view of each
//     method, so the bound of WithRetryBudget (or WithRetryThrottling) holds
//     for the client as a whole;
//   - grpc.WithDisableRetry, so that grpc-go's own retry policy, which runs
//     beneath interceptors, does not multiply attempts. grpc-go's transparent
//     retry of streams that never reached the server stays on: it is not
//     affected by WithDisableRetry;
//   - with WithAvoidTriedBackends, grpc.WithDefaultServiceConfig selecting
//     AvoidTriedBackendsPolicy over round_robin;
//   - unless WithNoProxy or WithDialFunc is given, HTTP CONNECT proxies from
//     HTTPS_PROXY and NO_PROXY as grpc-go uses them without a custom dialer:
//     the Dialer tunnels through the proxy, and a "dns" resolver
//     (grpc.WithResolvers) that leaves a proxied name for the proxy to
//     resolve (see internal/dialroute). grpc.WithNoProxy does not reach the Dialer.
//
// Invalid options are returned as an error matching ErrInvalidOption that
// names each option and value; nothing panics. The Dialer runs no goroutine
// while it has no connection, so closing the grpc.ClientConn is all the
// clean-up there is. Use one DialOptions result per grpc.ClientConn.
//
// The same can be built by hand from NewDialer, UnaryClientHedge,
// UnaryClientRetry and StreamClientRetry (see their documentation for the
// order), but each of those has its own budget: the bound then holds per
// interceptor, and adds up.
func DialOptions(opts ...Option) ([]grpc.DialOption, error) {
	return dialOptions(opts, nil)
}

// dialOptions is DialOptions with the Dialer's dial function optionally
// wrapped, for tests that must dial from another network namespace. It is
// the one place where DialOptions' options are parsed.
func dialOptions(opts []Option, wrapDial func(dialFunc) dialFunc) ([]grpc.DialOption, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return assemble(cfg, newClientRuntime(&cfg), wrapDial), nil
}

// clientRuntime is the state the parts of one DialOptions client share while
// it runs, beside their settings (config): made once per client, from the
// settings and the environment, and never set by an option. An interceptor or
// a Dialer built on its own gets a zero clientRuntime: nothing to share, no
// proxy.
type clientRuntime struct {
	// dedup is what the client learns of its servers' deduplication: the
	// request-id interceptor learns into it, the retry decision reads it
	// (issue 11). nil: the client sends no request ids of its own, so no
	// resend may rely on deduplication.
	dedup *dedupKnowledge
	// proxy is grpc-go's proxy rule, which the Dialer and the "dns"
	// resolver apply; nil: never proxy.
	proxy dialroute.ProxyFunc
}

// newClientRuntime makes the shared state of one DialOptions client.
func newClientRuntime(cfg *config) *clientRuntime {
	rt := &clientRuntime{dedup: newDedupKnowledge()}
	if s := cfg.dedupStatus; s != nil {
		// The status reports what this client learns (dedup_status.go).
		s.k.taken.Store(true)
		rt.dedup = s.k
	}
	rt.proxy = dialroute.FromEnvironment() // the Dialer decides whether it applies
	return rt
}

// assemble builds DialOptions' result from the client's settings and
// runtime state: one Dialer, one clientState shared by both interceptors,
// one request-id interceptor. Each gets cfg and rt explicitly; nothing is
// parsed again.
func assemble(cfg config, rt *clientRuntime, wrapDial func(dialFunc) dialFunc) []grpc.DialOption {
	state := newClientState(cfg, rt)
	ids := newRequestIDs(cfg, rt)
	d := newDialer(cfg, rt)
	dial := dialFunc(d.DialContext)
	if wrapDial != nil {
		dial = wrapDial(dial)
	}
	state.pickUnary, state.pickStream = d.UnaryClientInterceptor(), d.StreamClientInterceptor()
	dopts := []grpc.DialOption{
		grpc.WithContextDialer(dial),
		// Request ids outermost: one id per call, the same on every attempt.
		grpc.WithChainUnaryInterceptor(ids.unary, state.unary),
		grpc.WithChainStreamInterceptor(state.streamRetry),
		grpc.WithDisableRetry(),
	}
	if p := d.router.Proxy; p != nil {
		dopts = append(dopts, grpc.WithResolvers(dialroute.Resolver{Proxy: p}))
	}
	if cfg.avoidTried {
		// A default: a resolver's service config, or the caller's own
		// WithDefaultServiceConfig after these options, replaces it (see
		// WithAvoidTriedBackends).
		dopts = append(dopts, grpc.WithDefaultServiceConfig(avoidtried.DefaultServiceConfig))
	}
	return dopts
}

// unary is DialOptions' unary interceptor: hedging and retry over one plan,
// each attempt through the Dialer's check before the pick.
func (cs *clientState) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	r := unaryRPC{method: method, req: req, reply: reply, cc: cc, invoker: invoker, opts: opts}
	if ownedAttempt(opts) {
		return cs.invoke(ctx, &r, reply, opts) // an outer interceptor owns the attempts
	}
	var p plan
	if err := cs.planFor(&p, method, opts); err != nil {
		return err
	}
	return cs.runUnary(ctx, &p, true, &r)
}

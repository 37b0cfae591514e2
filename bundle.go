package grpcguard

import (
	"context"
	"net"

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
//   - unless WithNoProxy or WithDialFunc is given, HTTP CONNECT proxies from
//     HTTPS_PROXY and NO_PROXY as grpc-go uses them without a custom dialer:
//     the Dialer tunnels through the proxy, and a "dns" resolver
//     (grpc.WithResolvers) that leaves a proxied name for the proxy to
//     resolve (see proxy.go). grpc.WithNoProxy does not reach the Dialer.
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
// wrapped, for tests that must dial from another network namespace.
func dialOptions(opts []Option, wrapDial func(dialFunc) dialFunc) ([]grpc.DialOption, error) {
	// One dedup knowledge per client: the request-id interceptor learns into
	// it, the after-failure step reads it (issue 11).
	opts = append(opts[:len(opts):len(opts)], proxyFromEnvironment(), withDedupKnowledge(newDedupKnowledge()))
	cs := newClientState(opts)
	if cs.invalid != nil {
		return nil, cs.invalid
	}
	ids := newRequestIDs(opts)
	d := NewDialer(opts...)
	dial := dialFunc(d.DialContext)
	if wrapDial != nil {
		dial = wrapDial(dial)
	}
	cs.pickUnary, cs.pickStream = d.UnaryClientInterceptor(), d.StreamClientInterceptor()
	dopts := []grpc.DialOption{
		grpc.WithContextDialer(dial),
		// Request ids outermost: one id per call, the same on every attempt.
		grpc.WithChainUnaryInterceptor(ids.unary, cs.unary),
		grpc.WithChainStreamInterceptor(cs.streamRetry),
		grpc.WithDisableRetry(),
	}
	if cs.cfg.proxies() {
		dopts = append(dopts, grpc.WithResolvers(proxyResolver{proxy: cs.cfg.proxy}))
	}
	return dopts, nil
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

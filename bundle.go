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
//   - the unary chain hedging (only when configured: WithHedgeDelay,
//     WithAdaptiveHedgeDelay or a service config hedgingPolicy) -> retry ->
//     the Dialer's probe before the pick, and the stream chain retry -> probe,
//     so that every attempt, original, retry or hedge, is probed before it
//     picks a transport and the retry can tell whether it left the client;
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
func DialOptions(opts ...Option) ([]grpc.DialOption, error) {
	return dialOptions(opts, nil)
}

// dialOptions is DialOptions with the Dialer's dial function optionally
// wrapped, for tests that must dial from another network namespace.
func dialOptions(opts []Option, wrapDial func(dialFunc) dialFunc) ([]grpc.DialOption, error) {
	opts = append(opts[:len(opts):len(opts)], proxyFromEnvironment())
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	// Request ids outermost, once per call (issue 11); their knowledge is shared by the chain.
	opts = append(opts[:len(opts):len(opts)], withDedupKnowledge(newDedupKnowledge()))
	ids := newRequestIDs(opts)
	d := NewDialer(opts...)
	dial := dialFunc(d.DialContext)
	if wrapDial != nil {
		dial = wrapDial(dial)
	}
	unary := []grpc.UnaryClientInterceptor{UnaryClientRetry(opts...), d.UnaryClientInterceptor()}
	switch {
	case cfg.hedgeEnabled:
		unary = append([]grpc.UnaryClientInterceptor{UnaryClientHedge(opts...)}, unary...)
	case cfg.serviceConfig != nil && cfg.serviceConfig.hedges():
		onlyByPolicy := option(func(c *config) error { c.hedgeOnlyByPolicy = true; return nil })
		hedge := UnaryClientHedge(append(append([]Option(nil), opts...), onlyByPolicy)...)
		unary = append([]grpc.UnaryClientInterceptor{hedge}, unary...)
	}
	unary = append([]grpc.UnaryClientInterceptor{ids.unary}, unary...)
	dopts := []grpc.DialOption{
		grpc.WithContextDialer(dial),
		grpc.WithChainUnaryInterceptor(unary...),
		grpc.WithChainStreamInterceptor(ids.stream, StreamClientRetry(opts...), d.StreamClientInterceptor()),
		grpc.WithDisableRetry(),
	}
	if cfg.proxies() {
		dopts = append(dopts, grpc.WithResolvers(proxyResolver{proxy: cfg.proxy}))
	}
	return dopts, nil
}

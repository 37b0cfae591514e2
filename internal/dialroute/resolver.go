package dialroute

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
)

// decision is the proxy decision the "dns" resolver made for a whole
// target, carried on each address it produced. A zero decision means direct.
type decision struct{ proxy *url.URL }

type decisionKey struct{}

// withDecision returns a with d attached.
func withDecision(a resolver.Address, d decision) resolver.Address {
	a.Attributes = a.Attributes.WithValue(decisionKey{}, d)
	return a
}

// decisionFrom returns the decision the resolver attached to the address
// being dialed; grpc puts the address attributes in the dial context.
func decisionFrom(ctx context.Context) (decision, bool) {
	d, ok := credentials.ClientHandshakeInfoFromContext(ctx).Attributes.Value(decisionKey{}).(decision)
	return d, ok
}

// Resolver is the "dns" resolver DialOptions installs while its Dialer
// proxies by the rule Proxy (grpc.WithResolvers: for this ClientConn only). It decides as
// grpc-go's delegating resolver does when no dialer is set: the target's
// host:port (port 443 when absent) under the proxy rule. A proxied target is
// not resolved: its one address is the name, for the proxy to resolve. A
// target not proxied is resolved by the registered "dns" resolver, and its
// addresses are marked direct, so that the Dialer does not proxy an address
// of a target that NO_PROXY covers by name.
type Resolver struct{ Proxy ProxyFunc }

// Scheme returns "dns": the resolver replaces the registered one.
func (Resolver) Scheme() string { return "dns" }

// Build decides the proxy of target t and resolves it unless proxied.
func (b Resolver) Build(t resolver.Target, cc resolver.ClientConn, opts resolver.BuildOptions) (resolver.Resolver, error) {
	dns := resolver.Get("dns")
	if dns == nil {
		return nil, errors.New(`grpcguard: no "dns" resolver registered`)
	}
	addr, err := withDefaultPort(t.Endpoint())
	if err != nil {
		return nil, fmt.Errorf("grpcguard: target %q: %w", t.Endpoint(), err)
	}
	p, err := b.Proxy.forAddress(addr)
	if err != nil {
		return nil, fmt.Errorf("grpcguard: proxy for target %q: %w", addr, err)
	}
	if p == nil {
		return dns.Build(t, directCC{cc}, opts)
	}
	a := withDecision(resolver.Address{Addr: addr}, decision{proxy: p})
	// As grpc-go's: an error here means no usable address yet, and grpc
	// reports it; a later ResolveNow has nothing new to say.
	cc.UpdateState(resolver.State{
		Addresses: []resolver.Address{a},
		Endpoints: []resolver.Endpoint{{Addresses: []resolver.Address{a}}},
	})
	return staticResolver{}, nil
}

// withDefaultPort completes a target's host with port 443, as grpc-go does
// before deciding on a proxy ("host" gets it; ":80" means localhost:80).
func withDefaultPort(target string) (string, error) {
	if target == "" {
		return "", errors.New("missing address")
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return net.JoinHostPort(target, "443"), nil
	}
	if port == "" {
		return "", errors.New("missing port after port-separator colon")
	}
	return net.JoinHostPort(cmp.Or(host, "localhost"), port), nil
}

// directCC marks every address the "dns" resolver reports as dialed
// directly.
type directCC struct{ resolver.ClientConn }

func (c directCC) UpdateState(s resolver.State) error {
	s.Addresses = directAddrs(s.Addresses)
	if s.Endpoints != nil {
		eps := make([]resolver.Endpoint, len(s.Endpoints))
		for i, ep := range s.Endpoints {
			ep.Addresses = directAddrs(ep.Addresses)
			eps[i] = ep
		}
		s.Endpoints = eps
	}
	return c.ClientConn.UpdateState(s)
}

// NewAddress is resolver.ClientConn's deprecated form of UpdateState.
func (c directCC) NewAddress(addrs []resolver.Address) {
	c.UpdateState(resolver.State{Addresses: addrs})
}

func directAddrs(in []resolver.Address) []resolver.Address {
	if in == nil {
		return nil
	}
	out := make([]resolver.Address, len(in))
	for i, a := range in {
		out[i] = withDecision(a, decision{})
	}
	return out
}

type staticResolver struct{}

func (staticResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (staticResolver) Close()                                {}

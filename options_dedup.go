package grpcguard

import "fmt"

// WithRequestIDs turns the request ids of DialOptions on (the default) or off.
// With ids on, every call carries a RequestIDHeader of 128 random bits, the
// same on every attempt and hedge of the call and different for every call,
// so that a server running UnaryServerDedup runs each call at most once and
// answers a resend with the first outcome. A call whose outgoing metadata
// already holds a RequestIDHeader keeps the caller's id: an application can
// name a logical operation itself and retry it across processes.
//
// Off, calls carry no id and the client never learns that a server
// deduplicates, so it never resends a call because of it. The cost of ids is
// a few hundred nanoseconds per call, most of it grpc-go's
// metadata.AppendToOutgoingContext (see BenchmarkRequestID).
func WithRequestIDs(on bool) ClientOption {
	return clientOption(func(c *config) error {
		c.requestIDsOff = !on
		return nil
	})
}

// WithServerDedup declares by hand that the servers of this client run the
// given methods under UnaryServerDedup with a store shared by every replica
// the calls can reach (a Redis store, or a single server process), keeping ids
// at least DefaultDedupTTL. A call of such a method whose request may have
// reached the server may then be resent, with its request id, within that
// window; the server answers the resend with the first outcome or refuses it.
//
// Without this option the client learns it per target, from the
// DedupHeader the servers send, and only for the methods and replicas that
// sent it: nothing is assumed. Names are full method names,
// "/pkg.Service/Method", or a whole service, "/pkg.Service/*". Repeated uses
// add up. Without request ids (WithRequestIDs(false)) it has no effect.
func WithServerDedup(methods ...string) ClientOption {
	return clientOption(func(c *config) error {
		set := &methodSet{methods: map[string]struct{}{}, services: map[string]struct{}{}}
		if c.serverDedup != nil {
			set = c.serverDedup.clone()
		}
		for _, m := range methods {
			if err := set.add(m); err != nil {
				return invalid("WithServerDedup", fmt.Sprintf("%q", m), err.Error())
			}
		}
		c.serverDedup = set
		return nil
	})
}

// withDedupKnowledge shares k between the interceptors of one DialOptions
// result: the request-id interceptor learns into it, retry and hedging read
// it.
func withDedupKnowledge(k *dedupKnowledge) ClientOption {
	return clientOption(func(c *config) error {
		c.dedup = k
		return nil
	})
}

package grpcguard

import "fmt"

// WithRequestIDs sets which calls of a DialOptions client carry a request
// id (RequestIDHeader): 128 random bits, the same on every attempt and hedge
// of the call, different for every call, so that a server running
// dedup.UnaryServerInterceptor runs the call at most once and answers a resend with the
// first outcome. A call whose outgoing metadata already holds a
// RequestIDHeader keeps the caller's id: an application can name a logical
// operation itself and retry it across processes (1 to 128 bytes, without
// ';', which separates the id from grpcguard's parameters).
//
// By default (without this option) a unary call carries an id where the id
// can matter: every call of a method its server deduplicates (learned from
// the server's DedupHeader, or declared with WithServerDedup), and one call
// per method every 100ms, from whose response the client learns. An id on
// every call costs the client and the server a unique header to encode and
// decode and four allocations in grpc-go's metadata API (measured by
// BenchmarkParallelOverhead; see docs/measurements.md), and buys nothing where the
// server does not deduplicate: the client resends a call on the strength of
// deduplication only once it has learned it, and then every call of the
// method carries its id. true puts an id on every unary call (for logs, or a
// server that deduplicates without advertising); false on none, and the
// client never resends a call because of deduplication. Streams carry none:
// they are not deduplicated.
func WithRequestIDs(on bool) ClientOption {
	return clientOption(func(c *config) error {
		c.requestIDsOff, c.requestIDsAll = !on, on
		return nil
	})
}

// WithServerDedup declares by hand that the servers of this client run the
// given methods under dedup.UnaryServerInterceptor with a store shared by every replica
// the calls can reach (a Redis store, or a single server process), keeping ids
// at least dedup.DefaultTTL. A call of such a method whose request may have
// reached the server may then be resent, with its request id, within that
// window; the server answers the resend with the first outcome or refuses it.
//
// The declaration is the operator's promise, and the client takes it as
// such: it resends without asking any server first. Declare only what holds
// for every replica the client can reach, for as long as it runs; a replica
// without the interceptor, or with another store, runs such a resend again.
//
// Without this option the client learns it per target, from the
// DedupHeader the servers send, and only for the methods and replicas that
// sent it: nothing is assumed. What it learned from one replica is not
// applied to another: before each resend it asks the dedup service
// (dedup.LookupMethod), which a server without it answers Unimplemented, and
// resends only if the store the first attempt met answers that the id never
// ran there (see ServerDedup.RegisterService). Names are full method names,
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

// Package grpcguard keeps grpc-go clients working when the network closes
// their idle connections under them.
//
// A load balancer, NAT, proxy or server closes an idle pooled connection with
// FIN or RST, or forgets it. The client does not notice until it writes: the
// next RPC fails with Unavailable ("connection reset by peer", "EOF"), and
// nobody can say whether the server ran it.
//
// grpcguard answers in layers:
//
//   - A Dialer, for grpc.WithContextDialer, whose connections can be probed
//     without reading from them (Probe: poll(2) for POLLRDHUP, FIN from RST
//     told apart, no byte consumed, no read lock taken). Before an RPC picks a
//     transport, its interceptors probe the connections that have been idle
//     and retire those idle past the idle horizon that carry no RPC, so the
//     RPC never meets them. Each connection also checks itself before its
//     first Write after idle, sending nothing on a stale socket: a probe, and
//     on Linux, when its path has been silent a second or more and longer
//     than this Dialer has seen it survive, a path check, a keepalive round
//     trip that catches a NAT or load balancer that forgot the flow.
//   - What each Dialer learns from its connections' deaths, weighed by what
//     a wrong guess costs: a reset after idle shortens the TCP keepalive of
//     all its connections, which keeps middleboxes from forgetting them; two
//     deaths that agree set the idle horizon, past 80% of which idle
//     connections are retired (or at WithMaxIdle). The horizon keeps a call
//     off a connection that an endpoint or proxy closes while the call is
//     being written.
//   - Retry and hedging interceptors that are safe by default: they resend a
//     call only when it provably never left the client or when its method is
//     idempotent, declared with WithIdempotentMethods or by the protobuf option
//     idempotency_level. "Never left" is a fact of the attempt's own
//     connection (closed, with no write in flight or begun since the attempt
//     started), never a status text; the interceptors learn it without the
//     Dialer's interceptor, in any chain order.
//   - Request ids and UnaryServerDedup, a server interceptor that runs each
//     id at most once and answers a repeat from the stored outcome (in
//     memory, or in Redis with the redisstore module): a client that learned
//     that its server deduplicates may then resend even a non-idempotent call
//     whose reply was lost.
//   - WithDialFunc and HTTP CONNECT proxies (HTTPS_PROXY, NO_PROXY, as
//     grpc-go uses them), so that grpcguard's Dialer composes with the
//     user's own dialer and network.
//   - Metrics, a prometheus.Collector the user registers, counting above all
//     stale connections by reason and the idle age at which they died.
//
// # Defaults
//
// Connections idle 100ms or more are probed (WithProbeAfterIdle); a busy
// connection is never probed or checked, so the per-RPC cost is a clock read
// and a few atomic operations, whatever the number of connections. A
// connection whose path has been silent 1s or more, and longer than its
// Dialer has seen the path survive, is path-checked before its next write
// (WithVerifyAfterIdle). The idle horizon is learned (WithMaxIdle). TCP
// keepalive (15s, 5s, 3 probes, shortened after a reset after idle) and
// TCP_USER_TIMEOUT (20s) are set on every TCP connection.
//
// # Errors
//
// Stale connections are reported with errors matching ErrStaleConn and
// carrying a *StaleConnError. Invalid options never panic: constructors that
// return no error report them on use (DialContext fails, interceptors fail
// calls with InvalidArgument), and the error matches ErrInvalidOption and
// names the option and its value.
package grpcguard

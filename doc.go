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
//     told apart, no byte consumed, no read lock taken). Its interceptors probe
//     the connections that have been idle before an RPC picks a transport,
//     close a stale one and let grpc redial, so the RPC never meets it. Each
//     connection also probes itself before its first Write after idle and
//     refuses, sending nothing, to write on a stale socket.
//   - Retry and hedging interceptors that are safe by default: they resend a
//     call only when it provably never left the client (the Dialer knows) or
//     when its method is idempotent, declared with WithIdempotentMethods or
//     by the protobuf option idempotency_level.
//   - Metrics, a prometheus.Collector the user registers, counting above all
//     stale connections by reason.
//
// # Defaults
//
// Connections idle 100ms or more are probed (WithProbeAfterIdle); a busy
// connection is never probed, so the per-RPC cost is an atomic load per
// connection and a clock read. TCP keepalive (15s, 5s, 3 probes) and
// TCP_USER_TIMEOUT (20s) are set on every TCP connection, as grpc-go would on
// an unwrapped one.
//
// # Errors
//
// Stale connections are reported with errors matching ErrStaleConn and
// carrying a *StaleConnError. Invalid options never panic: constructors that
// return no error report them on use (DialContext fails, interceptors fail
// calls with InvalidArgument), and the error matches ErrInvalidOption and
// names the option and its value.
package grpcguard

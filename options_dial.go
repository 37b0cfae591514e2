package grpcguard

import (
	"context"
	"net"
)

// How the Dialer obtains its sockets: from a dial function of the user's,
// or by dialing itself, directly or through the HTTP CONNECT proxy that
// HTTPS_PROXY names (internal/dialroute).

// WithDialFunc makes the Dialer obtain every connection from f instead of
// dialing itself: a SOCKS or CONNECT dialer, a cloud connector, a mesh or
// VPN dialer, a net.Dialer with its own Control. f receives the address
// exactly as grpc hands it to grpc.WithContextDialer ("host:port", or the
// unix forms) and ctx bounded by grpc's connect deadline, so a function
// written for grpc.WithContextDialer works unchanged. Each conn f returns is
// wrapped as the Dialer's own are.
//
// The probe and the pre-write check look at the socket of the conn f
// returns, through syscall.Conn (*net.TCPConn, *net.UnixConn, or any type
// with a SyscallConn method that returns the socket grpc's bytes go
// through); the path check (Linux) runs when that socket is TCP. A
// conn that does not expose its socket (a *tls.Conn, a
// userspace tunnel) cannot be probed: it is counted in
// grpcguard_connections_unprobed_total, reads as alive to every probe, and
// a dead one is found only when grpc's reader or a write meets the error;
// the retry still knows, from the conn's writes, whether an attempt left.
//
// With f the Dialer sets no socket option (WithKeepAlive and
// WithUserTimeout apply to sockets the Dialer makes) and never proxies: f
// owns the route. Default: none, the Dialer dials. nil is invalid.
func WithDialFunc(f func(ctx context.Context, addr string) (net.Conn, error)) ClientOption {
	return clientOption(func(c *config) error {
		if f == nil {
			return invalid("WithDialFunc", "nil", "must not be nil")
		}
		c.dialFunc = f
		return nil
	})
}

// WithNoProxy makes DialOptions' Dialer dial every address directly, whatever
// HTTPS_PROXY says: grpcguard's grpc.WithNoProxy. grpc's own option cannot
// reach the Dialer, since grpc ignores it once a dialer is set. Without it,
// DialOptions proxies as grpc-go does (see docs/proxies.md); a Dialer made
// with NewDialer never proxies, as grpc-go does not
// with a custom dialer. WithDialFunc implies it: the dial function owns the
// route.
func WithNoProxy() ClientOption {
	return clientOption(func(c *config) error {
		c.noProxy = true
		return nil
	})
}

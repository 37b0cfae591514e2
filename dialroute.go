package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"syscall"
)

// How the Dialer obtains the socket it wraps, in one place: from the user's
// dial function (WithDialFunc), through an HTTP CONNECT proxy (see proxy.go),
// or with its own net.Dialer. Whatever the source, the conn is wrapped the
// same way: probed, checked and counted when it exposes its socket
// (syscall.Conn), and counted as unprobed when it does not.

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

// errNoConn is returned when a dial function returns neither a conn nor an
// error.
var errNoConn = errors.New("grpcguard: dial function returned a nil conn and no error")

// errNoSocket is what SyscallConn returns for a dial function's conn that
// does not expose its socket.
var errNoSocket = errors.New("grpcguard: the dial function's conn does not expose its socket")

// noSocket wraps a dial function's conn that does not expose its socket, so
// that the Dialer's conn says so: grpc (channelz) and Probe call SyscallConn
// on every conn that has the method, and must get an error, not a nil
// RawConn.
type noSocket struct{ net.Conn }

func (noSocket) SyscallConn() (syscall.RawConn, error) { return nil, errNoSocket }

// exposesSocket reports whether c gives access to its socket.
func exposesSocket(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	return err == nil && rc != nil
}

// dialRoute is how DialContext obtains the socket for one address.
type dialRoute struct {
	addr             string   // as grpc gave it: what a dial function gets
	network, address string   // for net.Dial, without a dial function
	proxy            *url.URL // non-nil: tunnel to address through this proxy
}

// route decides how to dial addr. Without a dial function the address is
// parsed (parseDialAddr) and, when the Dialer proxies, the proxy is chosen:
// the one the "dns" resolver chose for the whole target, or else grpc-go's
// rule for this address.
func (d *Dialer) route(ctx context.Context, addr string) (dialRoute, error) {
	if d.cfg.dialFunc != nil {
		return dialRoute{addr: addr}, nil
	}
	network, address, err := parseDialAddr(addr)
	if err != nil {
		return dialRoute{}, err
	}
	r := dialRoute{addr: addr, network: network, address: address}
	if network != "tcp" || d.proxy == nil {
		return r, nil
	}
	if rt, ok := routeFrom(ctx); ok {
		r.proxy = rt.proxy
		return r, nil
	}
	if r.proxy, err = d.proxy.forAddress(address); err != nil {
		return dialRoute{}, fmt.Errorf("grpcguard: dial %q: proxy from environment: %w", addr, err)
	}
	return r, nil
}

// dialRaw obtains the socket for r.
func (d *Dialer) dialRaw(ctx context.Context, r dialRoute) (net.Conn, error) {
	switch {
	case d.cfg.dialFunc != nil:
		nc, err := d.cfg.dialFunc(ctx, r.addr)
		switch {
		case err != nil:
			if nc != nil {
				nc.Close() // grpc would drop it unclosed
			}
			return nil, err
		case nc == nil:
			return nil, errNoConn
		}
		if !exposesSocket(nc) {
			nc = noSocket{nc}
		}
		return nc, nil
	case r.proxy != nil:
		return d.dialProxy(ctx, r.proxy, r.address)
	}
	return d.nd.DialContext(ctx, r.network, r.address)
}

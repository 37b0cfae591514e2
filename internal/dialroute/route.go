// Package dialroute is how grpcguard's Dialer obtains the socket it wraps,
// in one place: from the user's dial function (WithDialFunc), through an
// HTTP CONNECT proxy as grpc-go would use it (proxy.go), or with the
// Dialer's own net.Dialer; and the "dns" resolver that decides the proxy
// for a whole target (resolver.go). Whatever the source, the Dialer wraps
// the conn the same way: probed, checked and counted when it exposes its
// socket (syscall.Conn), and counted as unprobed when it does not.
//
// The route is one concept: the proxy rule, the resolver's per-target
// decision, the address forms grpc hands a custom dialer and the dial
// function all decide where the bytes go, so they share one package and
// the types that carry the decision (Route, ProxyFunc).
package dialroute

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
)

// ErrNoConn is returned when a dial function returns neither a conn nor an
// error.
var ErrNoConn = errors.New("grpcguard: dial function returned a nil conn and no error")

// ErrNoSocket is what SyscallConn returns for a dial function's conn that
// does not expose its socket.
var ErrNoSocket = errors.New("grpcguard: the dial function's conn does not expose its socket")

// NoSocket wraps a dial function's conn that does not expose its socket, so
// that the Dialer's conn says so: grpc (channelz) and Probe call SyscallConn
// on every conn that has the method, and must get an error, not a nil
// RawConn.
type NoSocket struct{ net.Conn }

// SyscallConn reports that the conn does not expose its socket.
func (NoSocket) SyscallConn() (syscall.RawConn, error) { return nil, ErrNoSocket }

// exposesSocket reports whether c gives access to its socket.
func exposesSocket(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	return err == nil && rc != nil
}

// Router decides how to obtain the socket for an address, and obtains it.
// The Dialer makes one from its settings and does not change it afterwards;
// it is then safe for concurrent use.
type Router struct {
	// DialFunc, when set, obtains every conn (WithDialFunc): it owns the
	// route, so Proxy is not consulted and Net not used.
	DialFunc func(ctx context.Context, addr string) (net.Conn, error)
	// Proxy, when set, is grpc-go's proxy rule, applied to TCP addresses
	// the "dns" resolver (Resolver) did not decide; nil: never proxy.
	Proxy ProxyFunc
	// Net dials the sockets, to the server or to its proxy, without a
	// DialFunc.
	Net net.Dialer
}

// Route is how the Dialer obtains the socket for one address.
type Route struct {
	Addr             string   // as grpc gave it: what a dial function gets
	Network, Address string   // for net.Dial, without a dial function
	Proxy            *url.URL // non-nil: tunnel to Address through this proxy
}

// Route decides how to dial addr. Without a dial function the address is
// parsed (ParseAddr) and, when r proxies, the proxy is chosen: the one the
// "dns" resolver chose for the whole target, or else grpc-go's rule for
// this address.
func (r *Router) Route(ctx context.Context, addr string) (Route, error) {
	if r.DialFunc != nil {
		return Route{Addr: addr}, nil
	}
	network, address, err := ParseAddr(addr)
	if err != nil {
		return Route{}, err
	}
	rt := Route{Addr: addr, Network: network, Address: address}
	if network != "tcp" || r.Proxy == nil {
		return rt, nil
	}
	if decided, ok := decisionFrom(ctx); ok {
		rt.Proxy = decided.proxy
		return rt, nil
	}
	if rt.Proxy, err = r.Proxy.forAddress(address); err != nil {
		return Route{}, fmt.Errorf("grpcguard: dial %q: proxy from environment: %w", addr, err)
	}
	return rt, nil
}

// Dial obtains the socket for rt. A dial function's conn that does not
// expose its socket comes back wrapped in NoSocket.
func (r *Router) Dial(ctx context.Context, rt Route) (net.Conn, error) {
	switch {
	case r.DialFunc != nil:
		nc, err := r.DialFunc(ctx, rt.Addr)
		switch {
		case err != nil:
			if nc != nil {
				nc.Close() // grpc would drop it unclosed
			}
			return nil, err
		case nc == nil:
			return nil, ErrNoConn
		}
		if !exposesSocket(nc) {
			nc = NoSocket{nc}
		}
		return nc, nil
	case rt.Proxy != nil:
		return r.dialProxy(ctx, rt.Proxy, rt.Address)
	}
	return r.Net.DialContext(ctx, rt.Network, rt.Address)
}

// ParseAddr turns an address in any form grpc-go hands a custom dialer
// ("host:port" with IPv4, [IPv6] or a name, "unix:relative/path",
// "unix:///absolute/path", "unix:@name", "unix-abstract:name") into a
// network and an address for net.Dial.
func ParseAddr(addr string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		address = addr[len("unix://"):]
		if !strings.HasPrefix(address, "/") {
			return "", "", fmt.Errorf("grpcguard: dial %q: unix:// needs an absolute path", addr)
		}
		return "unix", address, nil
	case strings.HasPrefix(addr, "unix-abstract:"):
		address = addr[len("unix-abstract:"):]
		if address == "" {
			return "", "", fmt.Errorf("grpcguard: dial %q: empty abstract socket name", addr)
		}
		return "unix", "@" + address, nil
	case strings.HasPrefix(addr, "unix:"):
		address = addr[len("unix:"):]
		if address == "" || address == "@" {
			return "", "", fmt.Errorf("grpcguard: dial %q: empty unix socket path", addr)
		}
		return "unix", address, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("grpcguard: dial %q: %w", addr, err)
	}
	if port == "" {
		return "", "", fmt.Errorf("grpcguard: dial %q: missing port", addr)
	}
	_ = host // an empty host dials the local system, as net.Dial does
	return "tcp", addr, nil
}

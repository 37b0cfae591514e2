package dialroute

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"google.golang.org/grpc"
)

// HTTP CONNECT proxies, as grpc-go uses them when no custom dialer is set.
//
// grpc-go treats a custom dialer as "the user dials": with one, it neither
// resolves a proxy nor speaks CONNECT. DialOptions always sets one (the
// Dialer), so without what follows a client behind a proxy that works with
// plain grpc-go would dial its targets directly once it adopts grpcguard.
// DialOptions therefore makes its Dialer do what grpc-go would:
//
//   - The rule: a TCP address goes through the proxy that Go's
//     http.ProxyFromEnvironment names for "https://" + address (HTTPS_PROXY,
//     NO_PROXY and their lower-case forms, read once per process; loopback
//     addresses and "localhost" never). grpc-go calls the same function.
//   - For "dns" targets grpc-go decides once for the whole target, from its
//     name, and does not resolve a proxied name: the proxy does. DialOptions
//     installs the same decision as its "dns" resolver (resolver.go), and
//     passes it to the Dialer on the addresses (grpc hands a custom dialer
//     only the address string, and the address attributes in the dial
//     context). Other schemes' addresses get the rule one by one.
//   - The handshake: a TCP connection to the proxy's host (port 443 when the
//     URL has none, as grpc-go's resolver of the proxy name assumes), then
//     "CONNECT host:port HTTP/1.1" with the headers grpc-go sends: Host,
//     User-Agent "grpc-go/<version>", and Proxy-Authorization Basic when the
//     proxy URL carries a user. Only 200 is success. The URL's scheme is not
//     looked at (grpc-go does not either): the proxy is always spoken to in
//     plain HTTP.
//
// DialOptions installs all this only when HTTPS_PROXY (or https_proxy) is
// set when it is called: without, a client dials exactly as it did before.
//
// Differences from grpc-go, because the Dialer cannot see grpc's own options:
// grpc.WithNoProxy does not reach it (use WithNoProxy), the User-Agent lacks
// a grpc.WithUserAgent prefix, grpc.WithLocalDNSResolution is not honoured
// (the name always goes to the proxy), and for schemes other than "dns" a
// target whose name NO_PROXY covers is still proxied for addresses NO_PROXY
// does not cover. One difference is deliberate: the handshake ends at the
// dial's deadline or cancellation (grpc-go's can wait on a silent proxy).
//
// What the Dialer wraps is the socket to the proxy, so its probe and checks
// watch that leg: a proxy that closes or resets the client's connection
// (idle timeout, restart, or passing on the target's close, which common
// proxies do by closing both legs) is found before the next call exactly as
// a direct server's close is. What happens beyond the proxy is not seen: a
// target that vanishes while the proxy keeps the client's leg open, and the
// path check's round trip, which proves the path to the proxy, not to the
// server. The retry's proof that an attempt never left is unchanged: a byte
// never written to the proxy never reached the server.

// ProxyFunc picks the proxy for a request, as http.Transport.Proxy does: nil
// means no proxy. The Router passes a request for "https://host:port".
type ProxyFunc func(*http.Request) (*url.URL, error)

// maxProxyResponseHead bounds the status line and headers of a proxy's
// answer to CONNECT; real ones are under 200 bytes.
const maxProxyResponseHead = 16 << 10

// proxyUserAgent is what grpc-go sends as User-Agent to a proxy when the
// client set no grpc.WithUserAgent.
const proxyUserAgent = "grpc-go/" + grpc.Version

// FromEnvironment is the rule DialOptions gives its Dialer: grpc-go's,
// http.ProxyFromEnvironment. Without HTTPS_PROXY in the environment it is
// nil, so that a client with no proxy configured dials exactly as before: no
// rule to apply, no resolver of grpcguard's.
func FromEnvironment() ProxyFunc {
	if os.Getenv("HTTPS_PROXY") == "" && os.Getenv("https_proxy") == "" {
		return nil
	}
	return http.ProxyFromEnvironment
}

// forAddress returns the proxy for the TCP address host:port, nil for a
// direct dial: grpc-go's rule, the same request to the same function.
func (f ProxyFunc) forAddress(address string) (*url.URL, error) {
	return f(&http.Request{URL: &url.URL{Scheme: "https", Host: address}})
}

// proxyHostPort is where to dial the proxy of u.
func proxyHostPort(u *url.URL) string {
	return net.JoinHostPort(u.Hostname(), cmp.Or(u.Port(), "443"))
}

// dialProxy dials the proxy p and asks it for a tunnel to address. It
// returns the socket to the proxy with nothing of the tunnel read from it:
// the probe judges what is left in the socket, so no byte of the server's
// may wait anywhere else.
func (r *Router) dialProxy(ctx context.Context, p *url.URL, address string) (net.Conn, error) {
	hp := proxyHostPort(p)
	nc, err := r.Net.DialContext(ctx, "tcp", hp)
	if err != nil {
		return nil, fmt.Errorf("grpcguard: dial proxy %s for %s: %w", hp, address, err)
	}
	if err := connect(ctx, nc, p, address); err != nil {
		nc.Close()
		return nil, fmt.Errorf("grpcguard: proxy %s: CONNECT %s: %w", hp, address, err)
	}
	return nc, nil
}

// ErrProxyRefused is wrapped by the error of a CONNECT the proxy answered
// with anything but 200.
var ErrProxyRefused = errors.New("proxy refused the tunnel")

// connect runs the CONNECT exchange on nc until ctx's deadline or
// cancellation.
func connect(ctx context.Context, nc net.Conn, p *url.URL, address string) error {
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Host: address},
		Header: http.Header{"User-Agent": {proxyUserAgent}},
	}
	if u := p.User; u != nil {
		pw, _ := u.Password()
		req.Header.Add("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pw)))
	}
	// Only ctx ends the exchange, so that its error says why; the AfterFunc
	// runs once ctx is done and unblocks the exchange with a past deadline.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	err := exchange(nc, req)
	if !stop() {
		return ctx.Err() // the past deadline may be on: the conn is dropped
	}
	return err
}

// exchange writes req and reads the answer's head, and not one byte more.
func exchange(nc net.Conn, req *http.Request) error {
	if err := req.Write(nc); err != nil {
		return err
	}
	head, err := readResponseHead(nc)
	if err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s", ErrProxyRefused, resp.Status)
	}
	return nil
}

// readResponseHead reads up to and including the blank line that ends a
// response's headers. It never reads past it: each read asks for at most the
// bytes that can still be missing from "\r\n\r\n" (four at most: some twenty
// reads for a typical 70-byte answer, once per connection), so the tunnel's
// first bytes, which may arrive in the same segment, stay in the socket for
// grpc.
func readResponseHead(r io.Reader) ([]byte, error) {
	const end = "\r\n\r\n"
	buf := make([]byte, 0, 256)
	var chunk [len(end)]byte
	matched := 0 // the longest suffix of buf that is a prefix of end
	for {
		n, err := r.Read(chunk[:len(end)-matched])
		for _, b := range chunk[:n] {
			switch {
			case b == end[matched]:
				matched++
			case b == '\r':
				matched = 1
			default:
				matched = 0
			}
		}
		buf = append(buf, chunk[:n]...)
		switch {
		case matched == len(end):
			return buf, nil
		case err == io.EOF:
			return nil, io.ErrUnexpectedEOF
		case err != nil:
			return nil, err
		case len(buf) > maxProxyResponseHead:
			return nil, fmt.Errorf("proxy response head over %d bytes", maxProxyResponseHead)
		}
	}
}

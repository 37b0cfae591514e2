package grpcguard

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/dialroute"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
)

// These tests run the CONNECT handshake against connectProxy, a small real
// proxy on 127.0.0.1 that records each request head, and give the Dialer its
// proxy rule in its runtime state instead of through HTTPS_PROXY: Go reads
// the environment once per process (http.ProxyFromEnvironment), so tests that
// set it run in a child process (proxy_linux_test.go, with tinyproxy).

// proxyDialer is a Dialer configured by opts that proxies as DialOptions'
// does, with rule as the proxy rule.
func proxyDialer(t testing.TB, rule dialroute.ProxyFunc, opts ...Option) *Dialer {
	t.Helper()
	return newDialer(mustConfig(t, opts...), &clientRuntime{proxy: rule})
}

// readHead reads a request head up to its blank line, byte by byte so that
// nothing after it is consumed.
func readHead(r io.Reader) ([]byte, error) {
	var head []byte
	b := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		head = append(head, b[0])
	}
	return head, nil
}

// connectProxy is an HTTP CONNECT proxy on 127.0.0.1 that records the head of
// every request. With reply set it answers that and closes; otherwise it
// answers 200 and tunnels, but only to a loopback address (403 elsewhere).
type connectProxy struct {
	ln    net.Listener
	reply string

	mu   sync.Mutex
	reqs []string
	wg   sync.WaitGroup
}

func startConnectProxy(t testing.TB, reply string) *connectProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{ln: ln, reply: reply}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *connectProxy) url(userinfo string) *url.URL {
	u, _ := url.Parse("http://" + userinfo + p.ln.Addr().String())
	return u
}

func (p *connectProxy) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.reqs...)
}

func (p *connectProxy) serve() {
	defer p.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer c.Close()
			p.handle(c)
		}()
	}
}

func (p *connectProxy) handle(c net.Conn) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	head, err := readHead(c)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.reqs = append(p.reqs, string(head))
	p.mu.Unlock()
	if p.reply != "" {
		io.WriteString(c, p.reply)
		return
	}
	host := strings.Fields(string(head))[1]
	h, _, _ := net.SplitHostPort(host)
	if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\n\r\n")
		return
	}
	up, err := net.DialTimeout("tcp", host, 5*time.Second)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer up.Close()
	c.SetDeadline(time.Time{})
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{})
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
	io.Copy(c, up)
	c.(*net.TCPConn).CloseWrite()
	<-done
}

// The request is byte for byte what grpc-go writes: the request line, Host,
// User-Agent grpc-go/<version>, and Basic credentials from the URL (decoded:
// "p@ss:w0rd" is the password). proxy_linux_test.go compares it with grpc-go's
// own bytes.
func TestProxyConnectRequest(t *testing.T) {
	p := startConnectProxy(t, "HTTP/1.1 200 Connection established\r\n\r\n")
	d := proxyDialer(t, http.ProxyURL(p.url("gg:p%40ss%3Aw0rd@")))
	defer d.Close()
	c, err := d.DialContext(ctxTimeout(t, 5*time.Second), "ggtarget.test:50051")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := "CONNECT ggtarget.test:50051 HTTP/1.1\r\n" +
		"Host: ggtarget.test:50051\r\n" +
		"User-Agent: grpc-go/" + grpc.Version + "\r\n" +
		"Proxy-Authorization: Basic Z2c6cEBzczp3MHJk\r\n\r\n" // base64("gg:p@ss:w0rd")
	if got := p.requests(); len(got) != 1 || got[0] != want {
		t.Fatalf("proxy got %q, want %q", got, want)
	}
	if c.RemoteAddr().String() != p.ln.Addr().String() {
		t.Fatalf("RemoteAddr = %v, want the proxy %v (as grpc-go's peer address)", c.RemoteAddr(), p.ln.Addr())
	}
	if c.(*conn).prober.rc == nil {
		t.Fatal("the conn to the proxy cannot be probed")
	}
}

// The answer is read up to its blank line and not one byte further, so the
// server's first bytes stay in the socket, where the probe and grpc's reader
// find them, even when the proxy sends them in the same segment.
func TestProxyHandshakeLeavesTunnelBytesInSocket(t *testing.T) {
	p := startConnectProxy(t, "HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\nserver-preface")
	d := proxyDialer(t, http.ProxyURL(p.url("")))
	defer d.Close()
	c, err := d.DialContext(ctxTimeout(t, 5*time.Second), "10.0.0.1:443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if string(got) != "server-preface" || err != nil {
		t.Fatalf("read %q, %v after the handshake; want the server's bytes and EOF", got, err)
	}
}

// Anything but 200 fails the dial with the proxy's status, counted as a
// failed dial; the credentials never appear in the error.
func TestProxyRefusalFailsDial(t *testing.T) {
	p := startConnectProxy(t, "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 5\r\n\r\nnope!")
	m := NewMetrics()
	d := proxyDialer(t, http.ProxyURL(p.url("gg:s3cret@")), WithMetrics(m))
	defer d.Close()
	_, err := d.DialContext(ctxTimeout(t, 5*time.Second), "10.0.0.1:443")
	if !errors.Is(err, dialroute.ErrProxyRefused) || !strings.Contains(err.Error(), "407") {
		t.Fatalf("dial = %v, want a refusal naming 407", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("the error shows the proxy password: %v", err)
	}
	if n := testutil.ToFloat64(m.dialErr); n != 1 {
		t.Fatalf("dials_total{result=error} = %v, want 1", n)
	}
}

// A proxy that accepts and never answers holds the dial only until its
// deadline or cancellation.
func TestProxyHandshakeEndsWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	u, _ := url.Parse("http://" + ln.Addr().String())
	d := proxyDialer(t, http.ProxyURL(u))
	defer d.Close()

	dial := func(ctx context.Context) <-chan error {
		errc := make(chan error, 1)
		go func() { _, err := d.DialContext(ctx, "10.0.0.1:443"); errc <- err }()
		return errc
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	select {
	case err := <-dial(ctx):
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial past its deadline = %v, want DeadlineExceeded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handshake did not end at the dial's deadline")
	}

	ctx, cancel = context.WithCancel(context.Background())
	errc := dial(ctx)
	for range 2 { // the first dial's conn, then this one's
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	held[1].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := readHead(held[1]); err != nil {
		t.Fatal(err) // the dial is now waiting for the answer
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled dial = %v, want Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handshake did not end when its context was cancelled")
	}
}

// proxyClient is a DialOptions client of target with rule as its proxy rule.
func proxyClient(t *testing.T, target string, rule dialroute.ProxyFunc, opts ...Option) *grpc.ClientConn {
	t.Helper()
	cfg := mustConfig(t, opts...)
	rt := newClientRuntime(&cfg)
	rt.proxy = rule
	dopts := assemble(cfg, rt, nil)
	cc, err := grpc.NewClient(target, append(dopts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// A "dns" target the rule proxies is not resolved by the client: the proxy
// gets the name, as grpc-go sends it without a custom dialer. ("localhost"
// resolves from /etc/hosts, so the test makes no DNS query either way; Go's
// real rule never proxies it, this test's rule proxies everything.)
func TestProxyGetsUnresolvedDNSName(t *testing.T) {
	addr := startServer(t, &testsvc.Server{})
	_, port, _ := net.SplitHostPort(addr)
	p := startConnectProxy(t, "")
	cc := proxyClient(t, "dns:///localhost:"+port, http.ProxyURL(p.url("")))
	var pr peer.Peer
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x", grpc.Peer(&pr)); err != nil {
		t.Fatal(err)
	}
	reqs := p.requests()
	if len(reqs) != 1 || !strings.HasPrefix(reqs[0], "CONNECT localhost:"+port+" ") {
		t.Fatalf("proxy got %q, want one CONNECT localhost:%s", reqs, port)
	}
	if pr.Addr.String() != p.ln.Addr().String() {
		t.Fatalf("peer %v, want the proxy %v", pr.Addr, p.ln.Addr())
	}
}

// A "dns" target the rule does not proxy by name is dialed directly, even
// at resolved addresses the rule would proxy (NO_PROXY=.corp.example with
// targets resolving to 10.x): grpc-go decides once, for the target.
func TestProxyTargetExcludedByNameDialsDirect(t *testing.T) {
	addr := startServer(t, &testsvc.Server{})
	_, port, _ := net.SplitHostPort(addr)
	p := startConnectProxy(t, "")
	proxyAll := http.ProxyURL(p.url(""))
	rule := func(r *http.Request) (*url.URL, error) {
		if r.URL.Hostname() == "localhost" {
			return nil, nil // NO_PROXY=localhost
		}
		return proxyAll(r)
	}
	m := NewMetrics()
	cc := proxyClient(t, "dns:///localhost:"+port, rule, WithMetrics(m))
	var pr peer.Peer
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x", grpc.Peer(&pr)); err != nil {
		t.Fatal(err)
	}
	if reqs := p.requests(); len(reqs) != 0 {
		t.Fatalf("proxy got %q for a target the rule excludes", reqs)
	}
	if pr.Addr.String() != addr {
		t.Fatalf("peer %v, want the server %v", pr.Addr, addr)
	}
}

// WithNoProxy and WithDialFunc turn the proxy off, in the Dialer and in the
// resolver.
func TestProxyOffWithNoProxyOrDialFunc(t *testing.T) {
	addr := startServer(t, &testsvc.Server{})
	_, port, _ := net.SplitHostPort(addr)
	p := startConnectProxy(t, "")
	var dialed []string
	var mu sync.Mutex
	f := func(ctx context.Context, a string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, a)
		mu.Unlock()
		return dialTCP(ctx, a)
	}
	for name, opt := range map[string]Option{"WithNoProxy": WithNoProxy(), "WithDialFunc": WithDialFunc(f)} {
		for _, target := range []string{"passthrough:///" + addr, "dns:///127.0.0.1:" + port} {
			cc := proxyClient(t, target, http.ProxyURL(p.url("")), opt)
			var pr peer.Peer
			if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x", grpc.Peer(&pr)); err != nil {
				t.Fatalf("%s, %s: %v", name, target, err)
			}
			if pr.Addr.String() != addr {
				t.Fatalf("%s, %s: peer %v, want the server %v", name, target, pr.Addr, addr)
			}
		}
	}
	if reqs := p.requests(); len(reqs) != 0 {
		t.Fatalf("proxy got %q", reqs)
	}
	if len(dialed) != 2 || dialed[0] != addr || dialed[1] != addr {
		t.Fatalf("dial function got %q, want the server's address twice", dialed)
	}
}

// Without HTTPS_PROXY, DialOptions adds nothing for proxies: no rule in the
// Dialer, no resolver of grpcguard's; a client dials exactly as before. (The
// test only builds options: Go's rule, which caches the environment for the
// process, is never called.)
func TestDialOptionsWithoutProxyEnvAddNothing(t *testing.T) {
	for _, env := range []struct{ upper, lower string }{{"", ""}, {"http://127.0.0.1:9", ""}, {"", "http://127.0.0.1:9"}} {
		t.Setenv("HTTPS_PROXY", env.upper)
		t.Setenv("https_proxy", env.lower)
		configured := env.upper != "" || env.lower != ""
		dopts, err := DialOptions()
		if err != nil {
			t.Fatal(err)
		}
		proxies := newDialer(defaultConfig(), newClientRuntime(&config{})).router.Proxy != nil
		if proxies != configured || len(dopts) != 4+btoi(configured) {
			t.Errorf("HTTPS_PROXY=%q https_proxy=%q: proxies %v, %d dial options", env.upper, env.lower, proxies, len(dopts))
		}
		cfg := mustConfig(t, WithNoProxy())
		if newDialer(cfg, newClientRuntime(&cfg)).router.Proxy != nil {
			t.Errorf("HTTPS_PROXY=%q https_proxy=%q: proxies with WithNoProxy", env.upper, env.lower)
		}
		if dopts, _ := DialOptions(WithNoProxy()); len(dopts) != 4 {
			t.Errorf("HTTPS_PROXY=%q https_proxy=%q: %d dial options with WithNoProxy, want 4", env.upper, env.lower, len(dopts))
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

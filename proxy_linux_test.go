//go:build linux

package grpcguard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
)

// Proxies from the environment, against plain grpc-go, with a real proxy.
//
// The test makes two network namespaces joined by a veth pair: the client's
// (tinyproxy on its 127.0.0.1, and the clients) and the server's
// (10.214.0.2, an address that exists only there). Go never proxies loopback
// targets; 10.214.0.2 and the name ggtarget.test, which resolves to it only
// where the test mounts its own /etc/hosts, are proxied. Nothing can leave the
// two namespaces: the client's has no other route, so a name the client
// tried to resolve itself would fail at once.
//
// Go reads HTTPS_PROXY and NO_PROXY once per process, so each environment is
// a child process: this test binary, run inside the client namespace with
// TestProxyChild, makes its calls through plain grpc-go and through
// DialOptions and prints the peer of each; this side reads tinyproxy's log.

const (
	proxyTargetName = "ggtarget.test"
	proxyServerIP   = "10.214.0.2"
	proxyChildEnv   = "GRPCGUARD_PROXY_CHILD"
)

// proxyNet is the pair of namespaces of one test.
type proxyNet struct {
	client, server string
	dir            string
	hosts          string // maps proxyTargetName to proxyServerIP
}

func newProxyNet(t *testing.T) *proxyNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("proxy: skipped: needs root to create network namespaces (ip netns add)")
	}
	for _, cmd := range []string{"ip", "tinyproxy", "sh", "mount"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Skipf("proxy: skipped: %s is not installed (apt-get install tinyproxy iproute2)", cmd)
		}
	}
	pid := os.Getpid()
	n := &proxyNet{client: fmt.Sprintf("gg-px-%d-c", pid), server: fmt.Sprintf("gg-px-%d-s", pid), dir: t.TempDir()}
	for _, ns := range []string{n.client, n.server} {
		if err := ipCmd("netns", "add", ns); err != nil {
			t.Skipf("proxy: skipped: cannot create a network namespace: %v", err)
		}
		t.Cleanup(func() { ipCmd("netns", "delete", ns) })
	}
	steps := [][]string{
		{"link", "add", "pxc0", "netns", n.client, "type", "veth", "peer", "name", "pxs0", "netns", n.server},
		{"-n", n.client, "addr", "add", "10.214.0.1/30", "dev", "pxc0"},
		{"-n", n.server, "addr", "add", proxyServerIP + "/30", "dev", "pxs0"},
		{"-n", n.client, "link", "set", "pxc0", "up"},
		{"-n", n.server, "link", "set", "pxs0", "up"},
		{"-n", n.client, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			t.Skipf("proxy: skipped: cannot set up the veth pair: %v", err)
		}
	}
	n.hosts = filepath.Join(n.dir, "hosts")
	if err := os.WriteFile(n.hosts, []byte("127.0.0.1 localhost\n"+proxyServerIP+" "+proxyTargetName+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

// command runs argv in the client namespace; with hosts, under the test's
// /etc/hosts, bind-mounted in the mount namespace that ip netns exec makes
// for the command alone.
func (n *proxyNet) command(hosts bool, argv ...string) *exec.Cmd {
	args := []string{"netns", "exec", n.client}
	if hosts {
		args = append(args, "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, n.hosts)
	}
	return exec.Command("ip", append(args, argv...)...)
}

// serve starts srv on proxyServerIP in the server namespace.
func (n *proxyNet) serve(t *testing.T, srv *testsvc.Server) string {
	t.Helper()
	ln := n.listen(t)
	serveOn(t, srv, ln)
	return ln.Addr().String()
}

func (n *proxyNet) listen(t *testing.T) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	if nsErr := inNetns(n.server, func() { ln, err = net.Listen("tcp", proxyServerIP+":0") }); nsErr != nil {
		t.Fatal(nsErr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// tinyproxy is one tinyproxy process in the client namespace.
type tinyproxy struct {
	addr string
	log  string
}

// startTinyproxy runs tinyproxy on 127.0.0.1:port of the client namespace,
// resolving names with the test's hosts file; auth is "user password" for
// BasicAuth, or empty.
func (n *proxyNet) startTinyproxy(t *testing.T, port int, auth string) *tinyproxy {
	t.Helper()
	tp := &tinyproxy{addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(n.dir, fmt.Sprintf("tinyproxy-%d.log", port))}
	conf := fmt.Sprintf("Port %d\nListen 127.0.0.1\nTimeout 60\nLogFile %q\nLogLevel Connect\nMaxClients 64\nAllow 127.0.0.1\n", port, tp.log)
	if auth != "" {
		conf += "BasicAuth " + auth + "\n"
	}
	confPath := filepath.Join(n.dir, fmt.Sprintf("tinyproxy-%d.conf", port))
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := n.command(true, "tinyproxy", "-d", "-c", confPath)
	out, err := os.Create(filepath.Join(n.dir, fmt.Sprintf("tinyproxy-%d.out", port)))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Skipf("proxy: skipped: tinyproxy does not start: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		var c net.Conn
		inNetns(n.client, func() { c, err = net.Dial("tcp", tp.addr) })
		if err == nil {
			c.Close()
			return tp
		}
		select {
		case <-exited:
			msg, _ := os.ReadFile(out.Name())
			t.Skipf("proxy: skipped: tinyproxy exited at start: %s", strings.TrimSpace(string(msg)))
		default:
		}
		if time.Now().After(deadline) {
			t.Skipf("proxy: skipped: tinyproxy does not listen on %s: %v", tp.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// connects counts the CONNECT requests for target in tinyproxy's log.
func (tp *tinyproxy) connects(t *testing.T, target string) int {
	t.Helper()
	b, err := os.ReadFile(tp.log)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`Request \(file descriptor \d+\): CONNECT ` + regexp.QuoteMeta(target) + ` HTTP/1\.1`)
	return len(re.FindAll(b, -1))
}

// childSpec is what TestProxyChild does: call each target with each client.
type childSpec struct {
	Targets []string
	Clients []string
	Capture bool // instead: record the CONNECT request of each client
}

// childResult is one call of the child.
type childResult struct {
	Client, Target string
	Peer           string // the transport's remote address: the proxy, or the server
	Err            string
	Request        string // Capture: the CONNECT request the client sent
}

// runChild runs spec in the client namespace with env as the only proxy
// variables, and returns the child's results by client and target. The
// parent never sets them in its own environment: Go would keep them for
// every later test of this process.
func (n *proxyNet) runChild(t *testing.T, hosts bool, spec childSpec, env ...string) map[[2]string]childResult {
	t.Helper()
	js, _ := json.Marshal(spec)
	cmd := n.command(hosts, os.Args[0], "-test.run=^TestProxyChild$", "-test.count=1", "-test.v")
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "REQUEST_METHOD", proxyChildEnv:
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(append(cmd.Env, env...), proxyChildEnv+"="+string(js))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child %s: %v\n%s", js, err, out)
	}
	res := map[[2]string]childResult{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "RESULT ")
		if !ok {
			continue
		}
		var r childResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("child result %q: %v", line, err)
		}
		res[[2]string{r.Client, r.Target}] = r
	}
	if len(res) == 0 {
		t.Fatalf("child %s printed no result:\n%s", js, out)
	}
	return res
}

// Clients of the child.
const (
	plainGRPC        = "grpc"
	plainGRPCNoProxy = "grpc+grpc.WithNoProxy"
	guard            = "grpcguard"
	guardNoProxy     = "grpcguard+WithNoProxy"
	guardGRPCNoProxy = "grpcguard+grpc.WithNoProxy"
)

// TestProxyChild is the child of TestProxyFromEnvironment; alone it skips.
func TestProxyChild(t *testing.T) {
	js := os.Getenv(proxyChildEnv)
	if js == "" {
		t.Skip("proxy: run by TestProxyFromEnvironment in a child process")
	}
	var spec childSpec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		t.Fatal(err)
	}
	var capture *connectProxy
	if spec.Capture {
		capture = startConnectProxy(t, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
		// Set before anything in this process reads it.
		t.Setenv("HTTPS_PROXY", "http://gg:p%40ss%3Aw0rd@"+capture.ln.Addr().String())
	}
	for _, target := range spec.Targets {
		for _, client := range spec.Clients {
			var opts []grpc.DialOption
			switch client {
			case plainGRPCNoProxy:
				opts = append(opts, grpc.WithNoProxy())
			case guard, guardNoProxy, guardGRPCNoProxy:
				var gopts []Option
				if client == guardNoProxy {
					gopts = append(gopts, WithNoProxy())
				}
				dopts, err := DialOptions(gopts...)
				if err != nil {
					t.Fatal(err)
				}
				opts = append(opts, dopts...)
				if client == guardGRPCNoProxy {
					opts = append(opts, grpc.WithNoProxy())
				}
			}
			opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
			cc, err := grpc.NewClient(target, opts...)
			if err != nil {
				t.Fatal(err)
			}
			before := 0
			if capture != nil {
				before = len(capture.requests())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			var pr peer.Peer
			_, err = testsvc.Call(ctx, cc, testsvc.Echo, "x", grpc.Peer(&pr))
			cancel()
			cc.Close()
			r := childResult{Client: client, Target: target}
			if pr.Addr != nil {
				r.Peer = pr.Addr.String()
			}
			if err != nil {
				r.Err = err.Error()
			}
			if capture != nil {
				if reqs := capture.requests(); len(reqs) > before {
					r.Request = reqs[before]
				}
			}
			js, _ := json.Marshal(r)
			fmt.Println("RESULT " + string(js))
		}
	}
}

// TestProxyFromEnvironment: with HTTPS_PROXY pointing at tinyproxy, calls
// through DialOptions go through the proxy exactly as plain grpc-go's do
// (the same peer, the same CONNECT in tinyproxy's log, the name unresolved
// for a dns target); NO_PROXY, by address or by name, keeps them direct for
// both alike; WithNoProxy does what grpc.WithNoProxy does for grpc-go, which
// does not reach the Dialer; Basic credentials in the URL are sent, and the
// request is byte for byte grpc-go's.
func TestProxyFromEnvironment(t *testing.T) {
	n := newProxyNet(t)
	srv := &testsvc.Server{}
	addr := n.serve(t, srv)
	_, port, _ := net.SplitHostPort(addr)
	name := proxyTargetName + ":" + port
	tp := n.startTinyproxy(t, 3128, "")
	proxyEnv := "HTTPS_PROXY=http://" + tp.addr
	all := []string{plainGRPC, guard, guardGRPCNoProxy}

	// want checks one result: through the proxy (peer is the proxy) or not.
	want := func(t *testing.T, res map[[2]string]childResult, client, target, peer string) {
		t.Helper()
		r, ok := res[[2]string{client, target}]
		switch {
		case !ok:
			t.Errorf("%s %s: no result", client, target)
		case r.Err != "" || r.Peer != peer:
			t.Errorf("%s %s: peer %q, error %q; want peer %s", client, target, r.Peer, r.Err, peer)
		}
	}
	wantConnects := func(t *testing.T, tp *tinyproxy, target string, n int) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second) // tinyproxy writes its log as it goes
		for tp.connects(t, target) < n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := tp.connects(t, target); got != n {
			b, _ := os.ReadFile(tp.log)
			t.Errorf("tinyproxy logged %d CONNECT %s, want %d; log:\n%s", got, target, n, b)
		}
	}

	t.Run("HTTPS_PROXY", func(t *testing.T) {
		before, beforeName := tp.connects(t, addr), tp.connects(t, name)
		targets := []string{addr, "passthrough:///" + addr}
		res := n.runChild(t, false, childSpec{Targets: targets, Clients: append(all, plainGRPCNoProxy, guardNoProxy)}, proxyEnv)
		for _, target := range targets {
			for _, c := range all {
				want(t, res, c, target, tp.addr)
			}
			want(t, res, plainGRPCNoProxy, target, addr)
			want(t, res, guardNoProxy, target, addr)
		}
		wantConnects(t, tp, addr, before+len(targets)*len(all))
		// A dns target's name goes to the proxy unresolved: the client
		// could not resolve it (no hosts file, no DNS server in reach).
		res = n.runChild(t, false, childSpec{Targets: []string{"dns:///" + name}, Clients: all}, proxyEnv)
		for _, c := range all {
			want(t, res, c, "dns:///"+name, tp.addr)
		}
		wantConnects(t, tp, name, beforeName+len(all))
	})

	t.Run("NO_PROXY address", func(t *testing.T) {
		before := tp.connects(t, addr)
		res := n.runChild(t, false, childSpec{Targets: []string{addr}, Clients: all}, proxyEnv, "NO_PROXY=10.214.0.0/30")
		for _, c := range all {
			want(t, res, c, addr, addr)
		}
		wantConnects(t, tp, addr, before)
	})

	t.Run("NO_PROXY name", func(t *testing.T) {
		// The name is excluded, its address is not: a dns target is
		// decided once, by name, and its resolved address dialed directly;
		// the address as a target is still proxied.
		before, beforeName := tp.connects(t, addr), tp.connects(t, name)
		res := n.runChild(t, true, childSpec{Targets: []string{"dns:///" + name, addr}, Clients: all}, proxyEnv, "NO_PROXY="+proxyTargetName)
		for _, c := range all {
			want(t, res, c, "dns:///"+name, addr)
			want(t, res, c, addr, tp.addr)
		}
		wantConnects(t, tp, name, beforeName)
		wantConnects(t, tp, addr, before+len(all))
	})

	t.Run("basic auth", func(t *testing.T) {
		auth := n.startTinyproxy(t, 3129, "gg s3cret")
		res := n.runChild(t, false, childSpec{Targets: []string{addr}, Clients: all}, "HTTPS_PROXY=http://gg:s3cret@"+auth.addr)
		for _, c := range all {
			want(t, res, c, addr, auth.addr)
		}
		wantConnects(t, auth, addr, len(all))
		res = n.runChild(t, false, childSpec{Targets: []string{addr}, Clients: all}, "HTTPS_PROXY=http://gg:wrong@"+auth.addr)
		for _, c := range all {
			if r := res[[2]string{c, addr}]; r.Err == "" {
				t.Errorf("%s with a wrong proxy password: call succeeded", c)
			}
		}
	})

	t.Run("request bytes", func(t *testing.T) {
		res := n.runChild(t, false, childSpec{Targets: []string{"dns:///" + name}, Clients: all, Capture: true})
		ref := res[[2]string{plainGRPC, "dns:///" + name}].Request
		if !strings.HasPrefix(ref, "CONNECT "+name+" HTTP/1.1\r\n") || !strings.Contains(ref, "\r\nProxy-Authorization: Basic ") {
			t.Fatalf("grpc-go sent %q", ref)
		}
		for _, c := range all[1:] {
			if got := res[[2]string{c, "dns:///" + name}].Request; got != ref {
				t.Errorf("%s sent %q, grpc-go %q", c, got, ref)
			}
		}
	})
}

// Through tinyproxy, the probe watches the socket to the proxy: when the
// server closes its connection, tinyproxy closes the client's leg, and the
// Dialer's conn refuses its next write after idle, having sent nothing, as it
// does for a direct server's FIN.
func TestProxyPeerCloseFoundThroughTinyproxy(t *testing.T) {
	n := newProxyNet(t)
	tp := n.startTinyproxy(t, 3128, "")
	ln := n.listen(t)
	defer ln.Close()
	u, _ := url.Parse("http://" + tp.addr)
	d := NewDialer(withProxy(http.ProxyURL(u)), WithProbeAfterIdle(time.Millisecond))
	defer d.Close()
	var nc net.Conn
	var err error
	dial := nsDialer(n.client, d.DialContext)
	ctx := ctxTimeout(t, 5*time.Second)
	if nc, err = dial(ctx, ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := nc.(*conn)
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The tunnel works both ways, then the server closes.
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("server read %q, %v", buf, err)
	}
	s.Close()
	waitPeerGone(t, c)
	waitFor(t, time.Second, "the conn to be idle", func() bool { return c.probeDue(nanotime()) })
	n2, err := c.Write([]byte("request"))
	var se *StaleConnError
	if n2 != 0 || !errors.As(err, &se) || se.Reason != PeerClosed || se.Op != "write" {
		t.Fatalf("Write after the server's close = %d, %v; want 0 and a peer_closed StaleConnError from write", n2, err)
	}
}

// The helpers below keep this file (issue 13), which builds its own pair of
// namespaces, on the plumbing of internal/netns.

// ipCmd runs ip with args and returns its output in the error if it fails.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// inNetns runs fn on an OS thread in the namespace ns (see netns.Namespace.Do).
func inNetns(ns string, fn func()) error {
	return netns.Namespace(ns).Do(func() error { fn(); return nil })
}

// nsDialer wraps dial so that its sockets are created in the namespace ns.
func nsDialer(ns string, dial dialFunc) dialFunc { return netns.Namespace(ns).Wrap(dial) }

//go:build linux

package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
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

// proxyChildEnv carries a childSpec to TestProxyChild.
const proxyChildEnv = "GRPCGUARD_PROXY_CHILD"

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
func runChild(t *testing.T, n *testutil.ProxyNet, hosts bool, spec childSpec, env ...string) map[[2]string]childResult {
	t.Helper()
	js, _ := json.Marshal(spec)
	cmd := n.Command(hosts, os.Args[0], "-test.run=^TestProxyChild$", "-test.count=1", "-test.v")
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
	var capture *connectCapture
	if spec.Capture {
		capture = startConnectCapture(t)
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
				var gopts []grpcguard.Option
				if client == guardNoProxy {
					gopts = append(gopts, grpcguard.WithNoProxy())
				}
				dopts, err := grpcguard.DialOptions(gopts...)
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
	n := testutil.NewProxyNet(t)
	srv := &testsvc.Server{}
	ln := n.Listen(t)
	testutil.ServeOn(t, srv, ln)
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	name := testutil.ProxyTargetName + ":" + port
	tp := n.StartTinyproxy(t, 3128, "")
	proxyEnv := "HTTPS_PROXY=http://" + tp.Addr
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
	wantConnects := func(t *testing.T, tp *testutil.Tinyproxy, target string, n int) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second) // tinyproxy writes its log as it goes
		for tp.Connects(t, target) < n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := tp.Connects(t, target); got != n {
			b, _ := os.ReadFile(tp.Log)
			t.Errorf("tinyproxy logged %d CONNECT %s, want %d; log:\n%s", got, target, n, b)
		}
	}

	t.Run("HTTPS_PROXY", func(t *testing.T) {
		before, beforeName := tp.Connects(t, addr), tp.Connects(t, name)
		targets := []string{addr, "passthrough:///" + addr}
		res := runChild(t, n, false, childSpec{Targets: targets, Clients: append(all, plainGRPCNoProxy, guardNoProxy)}, proxyEnv)
		for _, target := range targets {
			for _, c := range all {
				want(t, res, c, target, tp.Addr)
			}
			want(t, res, plainGRPCNoProxy, target, addr)
			want(t, res, guardNoProxy, target, addr)
		}
		wantConnects(t, tp, addr, before+len(targets)*len(all))
		// A dns target's name goes to the proxy unresolved: the client
		// could not resolve it (no hosts file, no DNS server in reach).
		res = runChild(t, n, false, childSpec{Targets: []string{"dns:///" + name}, Clients: all}, proxyEnv)
		for _, c := range all {
			want(t, res, c, "dns:///"+name, tp.Addr)
		}
		wantConnects(t, tp, name, beforeName+len(all))
	})

	t.Run("NO_PROXY address", func(t *testing.T) {
		before := tp.Connects(t, addr)
		res := runChild(t, n, false, childSpec{Targets: []string{addr}, Clients: all}, proxyEnv, "NO_PROXY=10.214.0.0/30")
		for _, c := range all {
			want(t, res, c, addr, addr)
		}
		wantConnects(t, tp, addr, before)
	})

	t.Run("NO_PROXY name", func(t *testing.T) {
		// The name is excluded, its address is not: a dns target is
		// decided once, by name, and its resolved address dialed directly;
		// the address as a target is still proxied.
		before, beforeName := tp.Connects(t, addr), tp.Connects(t, name)
		res := runChild(t, n, true, childSpec{Targets: []string{"dns:///" + name, addr}, Clients: all}, proxyEnv, "NO_PROXY="+testutil.ProxyTargetName)
		for _, c := range all {
			want(t, res, c, "dns:///"+name, addr)
			want(t, res, c, addr, tp.Addr)
		}
		wantConnects(t, tp, name, beforeName)
		wantConnects(t, tp, addr, before+len(all))
	})

	t.Run("basic auth", func(t *testing.T) {
		auth := n.StartTinyproxy(t, 3129, "gg s3cret")
		res := runChild(t, n, false, childSpec{Targets: []string{addr}, Clients: all}, "HTTPS_PROXY=http://gg:s3cret@"+auth.Addr)
		for _, c := range all {
			want(t, res, c, addr, auth.Addr)
		}
		wantConnects(t, auth, addr, len(all))
		res = runChild(t, n, false, childSpec{Targets: []string{addr}, Clients: all}, "HTTPS_PROXY=http://gg:wrong@"+auth.Addr)
		for _, c := range all {
			if r := res[[2]string{c, addr}]; r.Err == "" {
				t.Errorf("%s with a wrong proxy password: call succeeded", c)
			}
		}
	})

	t.Run("request bytes", func(t *testing.T) {
		res := runChild(t, n, false, childSpec{Targets: []string{"dns:///" + name}, Clients: all, Capture: true})
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

// connectCapture is an HTTP CONNECT proxy on 127.0.0.1 that records the
// head of every request, byte for byte, and refuses it (403).
type connectCapture struct {
	ln   net.Listener
	mu   sync.Mutex
	reqs []string
}

// startConnectCapture runs a connectCapture until the test ends.
func startConnectCapture(t *testing.T) *connectCapture {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectCapture{ln: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.refuse(c) // one at a time: the child calls one after another
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return p
}

// refuse reads the request head on c, records it and answers 403.
func (p *connectCapture) refuse(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var head []byte
	buf := make([]byte, 512)
	for !bytes.Contains(head, []byte("\r\n\r\n")) {
		n, err := c.Read(buf)
		head = append(head, buf[:n]...)
		if err != nil {
			return
		}
	}
	p.mu.Lock()
	p.reqs = append(p.reqs, string(head))
	p.mu.Unlock()
	io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
}

func (p *connectCapture) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.reqs)
}

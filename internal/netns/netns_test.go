//go:build linux

package netns

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newNet builds a Net for one test, or skips with one line.
func newNet(t *testing.T, tools ...string) *Net {
	t.Helper()
	if err := Check(tools...); err != nil {
		t.Skip(err)
	}
	n, err := New()
	if errors.Is(err, ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// echoServer accepts on ln and echoes until the test ends, then closes
// every conn it accepted and waits for its goroutines.
func echoServer(t *testing.T, ln net.Listener) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			wg.Add(1)
			mu.Unlock()
			go func() { defer wg.Done(); io.Copy(c, c) }()
		}
	}()
}

// roundTrip writes b on c and reads it back.
func roundTrip(c net.Conn, b string) error {
	if _, err := c.Write([]byte(b)); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, len(b))
	_, err := io.ReadFull(c, buf)
	return err
}

func nsInode(t *testing.T, path string) string {
	t.Helper()
	l, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestNetRoutesThroughRouter: a client in Client reaches a server in Server
// via the router, from ClientIP; no thread of the process is left in a test
// namespace; Close deletes the namespaces.
func TestNetRoutesThroughRouter(t *testing.T) {
	n := newNet(t)
	ln, err := n.Server.Listen("tcp", net.JoinHostPort(ServerIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c.RemoteAddr()
		c.Close()
	}()
	c, err := n.Client.DialContext(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	c.Close()
	ln.Close()
	if peer == nil {
		t.Fatal("accept failed")
	}
	if got := peer.(*net.TCPAddr).IP.String(); got != ClientIP {
		t.Fatalf("server saw the client as %s, want %s", got, ClientIP)
	}

	host := nsInode(t, "/proc/self/ns/net")
	for range 20 {
		if err := n.Router.Do(func() error {
			if got := nsInode(t, "/proc/thread-self/ns/net"); got == host {
				return errors.New("Do ran fn in the host's namespace")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	for _, p := range tasks {
		if l, err := os.Readlink(p); err == nil && l != host {
			t.Errorf("thread %s is left in namespace %s", p, l)
		}
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []Namespace{n.Client, n.Router, n.Server} {
		if _, err := os.Stat(ns.Path()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after Close: %v", ns, err)
		}
	}
}

// TestDoPanics: a panic in fn reaches the caller, and the thread is restored.
func TestDoPanics(t *testing.T) {
	n := newNet(t)
	defer func() {
		if recover() == nil {
			t.Fatal("the panic was lost")
		}
	}()
	n.Client.Do(func() error { panic("boom") })
}

// TestNewRemovesStale: the namespaces of a process that is gone are deleted
// by the next New; a live process's are not.
func TestNewRemovesStale(t *testing.T) {
	if err := Check(); err != nil {
		t.Skip(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := Namespace(namePrefix + strconv.Itoa(dead.Process.Pid) + "-1-c")
	live := Namespace(namePrefix + strconv.Itoa(os.Getppid()) + "-1-c")
	for _, ns := range []Namespace{stale, live} {
		if err := ipCmd("netns", "add", string(ns)); err != nil {
			t.Skip(err)
		}
		t.Cleanup(func() { deleteNamespace(ns) })
	}
	newNet(t)
	if _, err := os.Stat(stale.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale namespace %s of dead pid %d was not removed: %v", stale, dead.Process.Pid, err)
	}
	if _, err := os.Stat(live.Path()); err != nil {
		t.Errorf("namespace %s of a live process was removed: %v", live, err)
	}
}

// TestConntrackForgetsIdleFlows: through the firewall, a flow idle past the
// timeout is answered with RST; one used within it is not.
func TestConntrackForgetsIdleFlows(t *testing.T) {
	n := newNet(t, "nft")
	if err := n.Conntrack(time.Second); errors.Is(err, ErrUnsupported) {
		t.Skip(err)
	} else if err != nil {
		t.Fatal(err)
	}
	ln, err := n.Server.Listen("tcp", net.JoinHostPort(ServerIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	c, err := n.Client.DialContext(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, idle := range []time.Duration{0, 500 * time.Millisecond} {
		time.Sleep(idle)
		if err := roundTrip(c, "x"); err != nil {
			t.Fatalf("after %v idle: %v", idle, err)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	err = roundTrip(c, "y")
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after 1.5s idle: %v, want ECONNRESET from the firewall", err)
	}
}

// TestHAProxyClosesIdle: HAProxy closes an idle client connection with a
// FIN; with NoLinger a RST follows at once, so a write after it fails (EPIPE:
// a RST received in CLOSE_WAIT), where without it the write is accepted.
func TestHAProxyClosesIdle(t *testing.T) {
	n := newNet(t, "haproxy")
	ln, err := n.Server.Listen("tcp", net.JoinHostPort(ServerIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	addrs, err := n.HAProxy(200*time.Millisecond, Route{Backend: ln.Addr().String()}, Route{Backend: ln.Addr().String(), NoLinger: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, wantWrite := range []error{nil, syscall.EPIPE} {
		c, err := n.Client.DialContext(context.Background(), addrs[i])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := roundTrip(c, "x"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err = c.Read(make([]byte, 1))
		idle := time.Since(start)
		if err != io.EOF {
			t.Fatalf("frontend %d: idle conn ended with %v, want EOF", i, err)
		}
		time.Sleep(50 * time.Millisecond)
		_, werr := c.Write([]byte("z"))
		if !errors.Is(werr, wantWrite) {
			t.Fatalf("frontend %d: a write after the close: %v, want %v", i, werr, wantWrite)
		}
		t.Logf("frontend %d: EOF after %v idle, then write: %v", i, idle.Round(time.Millisecond), werr)
	}
}

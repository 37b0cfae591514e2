//go:build linux

package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/netns"
)

// Proxies from the environment, with a real proxy: two network namespaces
// joined by a veth pair, tinyproxy in the client's. Go never proxies loopback
// targets; ProxyServerIP and ProxyTargetName, which resolves to it only where
// a command runs with the test's hosts file, are proxied.

const (
	// ProxyTargetName resolves to ProxyServerIP under the test's hosts file.
	ProxyTargetName = "ggtarget.test"
	// ProxyServerIP is the server namespace's address.
	ProxyServerIP = "10.214.0.2"
)

// ProxyNet is the pair of namespaces of one test: the client's (a
// tinyproxy on its 127.0.0.1, and the clients) and the server's
// (ProxyServerIP, an address that exists only there), joined by a veth
// pair. The client's has no other route, so nothing leaves the two.
type ProxyNet struct {
	Client, Server string // the namespaces
	Dir            string // the test's files
	hosts          string // maps ProxyTargetName to ProxyServerIP
}

// NewProxyNet builds a ProxyNet, deleted when the test ends; it skips t
// without root, iproute2, tinyproxy or namespaces.
func NewProxyNet(t *testing.T) *ProxyNet {
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
	n := &ProxyNet{Client: fmt.Sprintf("gg-px-%d-c", pid), Server: fmt.Sprintf("gg-px-%d-s", pid), Dir: t.TempDir()}
	for _, ns := range []string{n.Client, n.Server} {
		if err := ipCmd("netns", "add", ns); err != nil {
			t.Skipf("proxy: skipped: cannot create a network namespace: %v", err)
		}
		t.Cleanup(func() { ipCmd("netns", "delete", ns) })
	}
	steps := [][]string{
		{"link", "add", "pxc0", "netns", n.Client, "type", "veth", "peer", "name", "pxs0", "netns", n.Server},
		{"-n", n.Client, "addr", "add", "10.214.0.1/30", "dev", "pxc0"},
		{"-n", n.Server, "addr", "add", ProxyServerIP + "/30", "dev", "pxs0"},
		{"-n", n.Client, "link", "set", "pxc0", "up"},
		{"-n", n.Server, "link", "set", "pxs0", "up"},
		{"-n", n.Client, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			t.Skipf("proxy: skipped: cannot set up the veth pair: %v", err)
		}
	}
	n.hosts = filepath.Join(n.Dir, "hosts")
	if err := os.WriteFile(n.hosts, []byte("127.0.0.1 localhost\n"+ProxyServerIP+" "+ProxyTargetName+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

// Command runs argv in the client namespace; with hosts, under the test's
// /etc/hosts, bind-mounted in the mount namespace that ip netns exec makes
// for the command alone.
func (n *ProxyNet) Command(hosts bool, argv ...string) *exec.Cmd {
	args := []string{"netns", "exec", n.Client}
	if hosts {
		args = append(args, "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, n.hosts)
	}
	return exec.Command("ip", append(args, argv...)...)
}

// Listen listens on ProxyServerIP, any port, in the server namespace.
func (n *ProxyNet) Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := netns.Namespace(n.Server).Listen("tcp", ProxyServerIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// Tinyproxy is one tinyproxy process in the client namespace.
type Tinyproxy struct {
	Addr string // 127.0.0.1:port in the client namespace
	Log  string // its log file
}

// StartTinyproxy runs tinyproxy on 127.0.0.1:port of the client namespace,
// resolving names with the test's hosts file; auth is "user password" for
// BasicAuth, or empty.
func (n *ProxyNet) StartTinyproxy(t *testing.T, port int, auth string) *Tinyproxy {
	t.Helper()
	tp := &Tinyproxy{Addr: fmt.Sprintf("127.0.0.1:%d", port), Log: filepath.Join(n.Dir, fmt.Sprintf("tinyproxy-%d.log", port))}
	conf := fmt.Sprintf("Port %d\nListen 127.0.0.1\nTimeout 60\nLogFile %q\nLogLevel Connect\nMaxClients 64\nAllow 127.0.0.1\n", port, tp.Log)
	if auth != "" {
		conf += "BasicAuth " + auth + "\n"
	}
	confPath := filepath.Join(n.Dir, fmt.Sprintf("tinyproxy-%d.conf", port))
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := n.Command(true, "tinyproxy", "-d", "-c", confPath)
	out, err := os.Create(filepath.Join(n.Dir, fmt.Sprintf("tinyproxy-%d.out", port)))
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
		netns.Namespace(n.Client).Do(func() error { c, err = net.Dial("tcp", tp.Addr); return nil })
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
			t.Skipf("proxy: skipped: tinyproxy does not listen on %s: %v", tp.Addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Connects counts the CONNECT requests for target in tinyproxy's log.
func (tp *Tinyproxy) Connects(t testing.TB, target string) int {
	t.Helper()
	b, err := os.ReadFile(tp.Log)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`Request \(file descriptor \d+\): CONNECT ` + regexp.QuoteMeta(target) + ` HTTP/1\.1`)
	return len(re.FindAll(b, -1))
}

// ipCmd runs ip with args and returns its output in the error if it fails.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

//go:build linux

package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The addresses: two private /30s that exist only inside the namespaces of
// one Net, so every Net can use the same ones and none can collide with the
// host's networks. The client side is 10.213.1.0/30, the server side
// 10.213.2.0/30; the router holds .2 of the first and .1 of the second.
const (
	ClientIP       = "10.213.1.1"
	RouterClientIP = "10.213.1.2"
	RouterServerIP = "10.213.2.1"
	ServerIP       = "10.213.2.2"
)

// Interface names, fixed: each lives in its own namespace.
const (
	clientDev       = "gg-router"  // in Client, toward the router
	routerClientDev = "gg-client"  // in Router, toward the client
	routerServerDev = "gg-server"  // in Router, toward the server
	serverDev       = "gg-router"  // in Server, toward the router
	namePrefix      = "grpcguard-" // grpcguard-PID-SEQ-{c,r,s}
)

// staleName matches the namespaces a Net names: the pid that made them is
// the first number.
var staleName = regexp.MustCompile(`^grpcguard-(\d+)-\d+-[crs]$`)

// seq numbers the Nets of this process, so that concurrent ones get distinct
// names. It is the only package-level state, and only ever grows.
var seq atomic.Uint64

// Net is a client, a router and a server namespace made by New:
//
//	Client ClientIP --veth-- RouterClientIP Router RouterServerIP --veth-- ServerIP Server
//
// The client and server route everything via the router, which forwards
// (ip_forward=1) and is where the middleboxes go. Close deletes it all and
// kills the processes started in it. Methods are safe for concurrent use.
type Net struct {
	Client, Router, Server Namespace

	mu     sync.Mutex
	procs  []*process
	tmp    []string // files to remove at Close
	closed bool
}

// New builds a Net. Namespaces left behind by runs whose process is gone
// (crashed, killed by a test timeout) are deleted first. An error wrapping
// ErrUnsupported means the machine does not allow it.
func New() (*Net, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	removeStale()
	base := fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), seq.Add(1))
	n := &Net{Client: Namespace(base + "c"), Router: Namespace(base + "r"), Server: Namespace(base + "s")}
	if err := n.build(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Net) build() error {
	for i, ns := range []Namespace{n.Client, n.Router, n.Server} {
		if err := ipCmd("netns", "add", string(ns)); err != nil {
			if i == 0 {
				return unsupportedf("cannot create a network namespace: %v", err)
			}
			return err
		}
	}
	// The veth ends are created directly inside the namespaces: no interface
	// ever appears in the host's namespace.
	steps := [][]string{
		{"link", "add", clientDev, "netns", string(n.Client), "type", "veth", "peer", "name", routerClientDev, "netns", string(n.Router)},
		{"link", "add", routerServerDev, "netns", string(n.Router), "type", "veth", "peer", "name", serverDev, "netns", string(n.Server)},
		{"-n", string(n.Client), "addr", "add", ClientIP + "/30", "dev", clientDev},
		{"-n", string(n.Router), "addr", "add", RouterClientIP + "/30", "dev", routerClientDev},
		{"-n", string(n.Router), "addr", "add", RouterServerIP + "/30", "dev", routerServerDev},
		{"-n", string(n.Server), "addr", "add", ServerIP + "/30", "dev", serverDev},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			return err
		}
	}
	for ns, devs := range map[Namespace][]string{
		n.Client: {"lo", clientDev},
		n.Router: {"lo", routerClientDev, routerServerDev},
		n.Server: {"lo", serverDev},
	} {
		for _, dev := range devs {
			if err := ns.ip("link", "set", dev, "up"); err != nil {
				return err
			}
		}
	}
	if err := n.Client.ip("route", "add", "default", "via", RouterClientIP); err != nil {
		return err
	}
	if err := n.Server.ip("route", "add", "default", "via", RouterServerIP); err != nil {
		return err
	}
	return n.Router.sysctl("net.ipv4.ip_forward", "1")
}

// Blackhole makes the router drop, silently, everything between client and
// server, in both directions: what a crashed host or a pulled cable looks
// like from the client. The client's kernel sends and retransmits into
// silence (no ICMP: a blackhole route answers nothing).
func (n *Net) Blackhole() error {
	for _, ip := range []string{ServerIP, ClientIP} {
		if err := n.Router.ip("route", "add", "blackhole", ip+"/32"); err != nil {
			return err
		}
	}
	return nil
}

// process is a command started in a namespace, killed by Close.
type process struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // Wait's, once done is closed
	stderr *strings.Builder
}

// start starts name inside ns; Close kills it by its pid and waits for it.
func (n *Net) start(ns Namespace, name string, arg ...string) (*process, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("netns: Net closed")
	}
	p := &process{cmd: ns.Command(name, arg...), done: make(chan struct{}), stderr: new(strings.Builder)}
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	// If this process dies without Close (a crash, a test timeout), the
	// kernel kills the child with it. Pdeathsig follows the thread that
	// forked; Go ends a thread only when a goroutine exits locked to it,
	// which Do does only if it cannot restore a thread's namespace. The
	// next New deletes the namespaces left behind.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("netns: start %s in %s: %w", name, ns, err)
	}
	n.procs = append(n.procs, p)
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// exited reports whether p has ended, with its error and output.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, fmt.Errorf("netns: %s exited: %v: %s", strings.Join(p.cmd.Args[4:], " "), p.err, strings.TrimSpace(p.stderr.String()))
	default:
		return false, nil
	}
}

// removeOnClose has Close remove path.
func (n *Net) removeOnClose(path string) {
	n.mu.Lock()
	n.tmp = append(n.tmp, path)
	n.mu.Unlock()
}

// Close kills the processes started in the Net, then any other process
// still inside its namespaces, deletes the namespaces and its files. It is
// idempotent and returns the first error.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	procs, tmp := n.procs, n.tmp
	n.mu.Unlock()
	for _, p := range procs {
		p.cmd.Process.Kill() // SIGKILL by pid: `ip netns exec` execs the tool, so this is the tool
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
	var first error
	for _, ns := range []Namespace{n.Client, n.Router, n.Server} {
		if err := deleteNamespace(ns); err != nil && first == nil {
			first = err
		}
	}
	for _, path := range tmp {
		os.RemoveAll(path)
	}
	return first
}

// deleteNamespace kills what still runs inside ns and deletes it; a
// namespace that does not exist is not an error.
func deleteNamespace(ns Namespace) error {
	if _, err := os.Stat(ns.Path()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "pids", string(ns)).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	return ipCmd("netns", "delete", string(ns))
}

// removeStale deletes the namespaces of Nets whose process no longer exists.
func removeStale() {
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() || unix.Kill(pid, 0) != syscall.ESRCH {
			continue // ours, or its process is alive
		}
		deleteNamespace(Namespace(e.Name()))
	}
}

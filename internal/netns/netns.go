//go:build linux

// Package netns builds real networks for grpcguard's tests and demo: network
// namespaces joined by veth pairs, a router between client and server, and
// the middleboxes that kill idle connections in production (a conntrack
// firewall that forgets idle flows, HAProxy closing idle connections with FIN
// or RST).
//
// Everything it makes exists only inside namespaces it created, with private
// addresses used nowhere else, and is deleted by Net.Close. It needs root and
// iproute2 (plus nft or haproxy for the middleboxes); Check says, in one line,
// what is missing.
//
// A process joins a namespace one OS thread at a time: Namespace.Do runs a
// function on a thread moved there, and the sockets it creates stay there for
// their whole life, whichever goroutine uses them later. That is how a
// listener is put in the server namespace and how clients dial from the
// client namespace while the rest of the process stays where it was.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DialFunc is the dial function of grpc.WithContextDialer.
type DialFunc = func(ctx context.Context, addr string) (net.Conn, error)

// ErrUnsupported matches the errors of a machine that cannot build the
// network (not root, a tool missing, a kernel that refuses namespaces or
// nftables): tests skip on them rather than fail. Their text is the reason
// alone, one line, fit for a skip message.
var ErrUnsupported = errors.New("netns: not supported on this machine")

// unsupported is an error matching ErrUnsupported.
type unsupported struct{ reason string }

func (e *unsupported) Error() string        { return e.reason }
func (e *unsupported) Is(target error) bool { return target == ErrUnsupported }

func unsupportedf(format string, a ...any) error {
	return &unsupported{reason: fmt.Sprintf(format, a...)}
}

// debianPackage names the Debian package that installs tool.
func debianPackage(tool string) string {
	switch tool {
	case "ip":
		return "iproute2"
	case "nft":
		return "nftables"
	}
	return tool
}

// Check reports why this process cannot build namespaces and run tools, as
// one line wrapping ErrUnsupported, or nil. ip is always needed; name the
// others ("nft", "haproxy").
func Check(tools ...string) error {
	if uid := os.Geteuid(); uid != 0 {
		return unsupportedf("needs root to create network namespaces (running as uid %d)", uid)
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			return unsupportedf("the %s command is not installed (Debian package %s)", tool, debianPackage(tool))
		}
	}
	return nil
}

// Namespace is a named network namespace, as `ip netns` knows it.
type Namespace string

// Path is the file that holds the namespace.
func (ns Namespace) Path() string { return "/var/run/netns/" + string(ns) }

// Do runs fn on an OS thread that has joined ns, so that the sockets fn
// creates belong to ns, and returns its error (a panic in fn is re-raised in
// the caller). fn runs on a goroutine of its own, locked to its thread: the
// caller's thread never changes namespace, and goroutines fn starts run
// elsewhere, in the process's own namespace. The thread is restored to its
// original namespace before it is unlocked; if that fails it is never
// unlocked, and Go ends it with the goroutine, so no other goroutine ever runs
// on a thread left in ns.
func (ns Namespace) Do(fn func() error) error {
	type outcome struct {
		err      error
		panicked any
	}
	done := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread()
		var out outcome
		restored := true
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			}
			done <- out
		}()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			out.err = fmt.Errorf("netns: open this thread's namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(ns.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			out.err = fmt.Errorf("netns: open %s: %w", ns, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			out.err = fmt.Errorf("netns: join %s: %w", ns, err)
			return
		}
		defer func() {
			out.panicked = recover()
			restored = unix.Setns(orig, unix.CLONE_NEWNET) == nil
		}()
		out.err = fn()
	}()
	out := <-done
	if out.panicked != nil {
		panic(out.panicked)
	}
	return out.err
}

// Listen listens on address inside ns; the listener and the conns it accepts
// stay in ns.
func (ns Namespace) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// Wrap returns dial made to create its sockets in ns. The conn dial returns
// is passed on as it is (a grpcguard Dialer's own conn stays one).
func (ns Namespace) Wrap(dial DialFunc) DialFunc {
	return func(ctx context.Context, addr string) (c net.Conn, err error) {
		if nsErr := ns.Do(func() error { c, err = dial(ctx, addr); return nil }); nsErr != nil {
			return nil, nsErr
		}
		return c, err
	}
}

// DialContext dials addr over TCP from ns the way grpc-go's default dialer
// does: SO_KEEPALIVE on with the kernel's parameters (7200 s idle on Linux),
// nothing else. It is the dialer of a plain grpc-go client in a namespace.
func (ns Namespace) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	return ns.Wrap(plainDial)(ctx, addr)
}

func plainDial(ctx context.Context, addr string) (net.Conn, error) {
	nd := net.Dialer{
		KeepAlive: -1,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var err error
			if cerr := rc.Control(func(fd uintptr) {
				err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
			}); cerr != nil {
				return cerr
			}
			return err
		},
	}
	return nd.DialContext(ctx, "tcp", addr)
}

// Command returns a command that runs name inside ns (`ip netns exec`).
func (ns Namespace) Command(name string, arg ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", string(ns), name}, arg...)...)
}

// Run runs name inside ns and returns an error carrying its output if it
// fails.
func (ns Namespace) Run(name string, arg ...string) error {
	return run(ns.Command(name, arg...))
}

// ip runs `ip -n ns args...`.
func (ns Namespace) ip(args ...string) error {
	return ipCmd(append([]string{"-n", string(ns)}, args...)...)
}

// sysctl writes a sysctl of ns through /proc/sys, which shows the network
// namespace of the thread that opens it, and reads it back.
func (ns Namespace) sysctl(name, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	return ns.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0); err != nil {
			return fmt.Errorf("netns: sysctl %s=%s in %s: %w", name, value, ns, err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("netns: sysctl %s in %s: %w", name, ns, err)
		}
		if g := strings.TrimSpace(string(got)); g != value {
			return fmt.Errorf("netns: sysctl %s in %s reads %q after writing %q", name, ns, g, value)
		}
		return nil
	})
}

func ipCmd(args ...string) error { return run(exec.Command("ip", args...)) }

func run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns: %s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

//go:build linux

package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/grpcguard/grpcguard/internal/netns"
	"google.golang.org/grpc"
)

// Tests on real networks: namespaces made by internal/netns, with addresses
// only inside them, deleted when the test ends. They need root and iproute2
// (and nft or haproxy for the middleboxes) and skip with one line otherwise.

// skipUnlessNetns skips t, in one line, when the machine cannot build
// namespaces and run tools, or in -short mode (these tests take seconds).
func skipUnlessNetns(t *testing.T, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped in -short mode: builds network namespaces and takes seconds")
	}
	if err := netns.Check(tools...); err != nil {
		t.Skipf("skipped: %v", err)
	}
}

// newNetns builds a client, router and server namespace for t, deleted when
// t ends, whether it passed or not.
func newNetns(t *testing.T) *netns.Net {
	t.Helper()
	skipUnlessNetns(t)
	n, err := netns.New()
	if errors.Is(err, netns.ErrUnsupported) {
		t.Skipf("skipped: %v", err)
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

// nsGuardOptions is DialOptions(opts...) for a client in the namespace ns:
// the Dialer's own dial, with its conn wrapping, runs on a thread in ns. Each
// conn it returns is counted in own when it is the Dialer's, in foreign when
// it is not (then the test is not testing grpcguard).
func nsGuardOptions(ns netns.Namespace, own, foreign *atomic.Int64, opts ...Option) ([]grpc.DialOption, error) {
	return dialOptions(opts, func(dial dialFunc) dialFunc {
		return ns.Wrap(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := dial(ctx, addr)
			if err == nil {
				if _, ok := c.(*conn); ok {
					own.Add(1)
				} else {
					foreign.Add(1)
				}
			}
			return c, err
		})
	})
}

// guardOptions is nsGuardOptions for a test that checks nothing about the
// conns.
func guardOptions(t *testing.T, ns netns.Namespace, opts ...Option) []grpc.DialOption {
	t.Helper()
	var own, foreign atomic.Int64
	dopts, err := nsGuardOptions(ns, &own, &foreign, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return dopts
}

// The helpers below keep proxy_linux_test.go (issue 13), which builds its own
// pair of namespaces, on the same plumbing as the tests above.

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

//go:build linux

package test

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"golang.org/x/sys/unix"
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

// sockets are the options a grpcguard Dialer sets on the sockets it makes:
// TCP keepalive and TCP_USER_TIMEOUT.
type sockets struct {
	keepIdle, keepInterval time.Duration
	keepCount              int
	userTimeout            time.Duration
}

// defaultSockets are the Dialer's defaults.
var defaultSockets = sockets{grpcguard.DefaultKeepAliveIdle, grpcguard.DefaultKeepAliveInterval,
	grpcguard.DefaultKeepAliveCount, grpcguard.DefaultUserTimeout}

// nsGuardOptions is grpcguard.DialOptions(opts...) for a client in the
// namespace ns, reporting to m. grpcguard.WithDialFunc hands the Dialer
// sockets made in ns, which it wraps, probes and path-checks as its own. It
// sets no socket option on a dial function's sockets, so the dial function
// sets sock, and the Dialer is told the same values (WithKeepAlive,
// WithUserTimeout: it shortens keepalive from them); that those options set
// them on the Dialer's own sockets is TestDialerSetsSocketOptions's.
func nsGuardOptions(ns netns.Namespace, m *grpcguard.Metrics, sock sockets, opts ...grpcguard.Option) ([]grpc.DialOption, error) {
	nd := net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: sock.keepIdle, Interval: sock.keepInterval, Count: sock.keepCount},
		Control: func(_, _ string, rc syscall.RawConn) error {
			var err error
			if cerr := rc.Control(func(fd uintptr) {
				err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(sock.userTimeout.Milliseconds()))
			}); cerr != nil {
				return cerr
			}
			return err
		},
	}
	dialTCP := func(ctx context.Context, addr string) (net.Conn, error) { return nd.DialContext(ctx, "tcp", addr) }
	return grpcguard.DialOptions(append(opts, grpcguard.WithMetrics(m),
		grpcguard.WithKeepAlive(sock.keepIdle, sock.keepInterval, sock.keepCount),
		grpcguard.WithUserTimeout(sock.userTimeout),
		grpcguard.WithDialFunc(ns.Wrap(dialTCP)))...)
}

// checkProbed fails t unless the client of reg dialed conns and could probe
// every one (they exposed their socket to the Dialer): otherwise the test is
// not testing grpcguard.
func checkProbed(t *testing.T, name string, reg *testutil.Registry) {
	t.Helper()
	dials := metric(t, reg, "grpcguard_dials_total", map[string]string{"result": "ok"})
	unprobed := metric(t, reg, "grpcguard_connections_unprobed_total", nil)
	if dials == 0 || unprobed != 0 {
		t.Errorf("%s: the Dialer dialed %v conns, %v of them unprobed: not testing grpcguard", name, dials, unprobed)
	}
}

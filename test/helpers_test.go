// Package test holds grpcguard's end-to-end tests: real servers, real
// sockets, fault proxies, network namespaces and real middleboxes, driven
// through the public API only (grpcguard.DialOptions and its options), with
// every result read from the public metrics by name, as a user's dashboard
// reads them. Unit tests of the internals stay beside the code, in the root
// package.
package test

import (
	"context"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"google.golang.org/grpc"
)

func TestMain(m *testing.M) {
	testutil.Main(m) // one of the root package and test/ at a time
}

// dial connects to addr ("host:port") with insecure credentials; the conn
// is closed when the test ends.
var dial = testutil.NewClient

// guardOptions is grpcguard.DialOptions(opts...) reporting to new metrics,
// registered on the returned registry and on no other.
func guardOptions(t testing.TB, opts ...grpcguard.Option) ([]grpc.DialOption, *testutil.Registry) {
	t.Helper()
	m := grpcguard.NewMetrics()
	reg := testutil.NewRegistry(t, m)
	dopts, err := grpcguard.DialOptions(append(opts, grpcguard.WithMetrics(m))...)
	if err != nil {
		t.Fatal(err)
	}
	return dopts, reg
}

// guardClient dials target with guardOptions(opts...).
func guardClient(t testing.TB, target string, opts ...grpcguard.Option) (*grpc.ClientConn, *testutil.Registry) {
	t.Helper()
	dopts, reg := guardOptions(t, opts...)
	return dial(t, target, dopts...), reg
}

// metric reads the series name{labels} of reg (nil labels: every series).
func metric(t testing.TB, reg *testutil.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	return testutil.MetricValue(t, reg, name, labels)
}

// stale is grpcguard_stale_connections_total, for one reason ("peer_closed",
// "reset", "error"), or for all with reason "".
func stale(t testing.TB, reg *testutil.Registry, reason string) int {
	t.Helper()
	var labels map[string]string
	if reason != "" {
		labels = map[string]string{"reason": reason}
	}
	return int(metric(t, reg, "grpcguard_stale_connections_total", labels))
}

// slowFor makes a server handler slow: it waits d or until ctx ends.
func slowFor(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

package grpcguard

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
)

func TestMetricsRegisterAndLint(t *testing.T) {
	m := NewMetrics(WithConstLabels(prometheus.Labels{"client": "a"}))
	reg := prometheus.NewRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	// A second client with other const labels shares the registry.
	if err := reg.Register(NewMetrics(WithConstLabels(prometheus.Labels{"client": "b"}))); err != nil {
		t.Fatal(err)
	}
	m.staleConn(Reset)
	m.probed(true)
	m.dialed(nil)
	mi := &methodInfo{service: "pkg.Svc", method: "M"}
	m.retried(mi, codes.Unavailable, true)
	m.hedged(mi)
	m.hedgeDelaySet(mi, 0.01)
	problems, err := testutil.CollectAndLint(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	const want = `
# HELP grpcguard_stale_connections_total Connections found closed or broken by the peer: by a probe, a refused write, or the reader.
# TYPE grpcguard_stale_connections_total counter
grpcguard_stale_connections_total{client="a",reason="error"} 0
grpcguard_stale_connections_total{client="a",reason="peer_closed"} 0
grpcguard_stale_connections_total{client="a",reason="reset"} 1
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "grpcguard_stale_connections_total"); err != nil {
		t.Fatal(err)
	}
}

func TestNilMetricsCountNothing(t *testing.T) {
	var m *Metrics
	m.staleConn(Reset)
	m.probed(false)
	m.dialed(nil)
	m.connClosed()
	mi := &methodInfo{service: "a.B", method: "C"}
	m.retried(mi, codes.Unavailable, false)
	m.retryThrottledFor(mi)
	m.hedged(mi)
	m.hedgeWon(mi)
	m.hedgeThrottledFor(mi)
	m.hedgeDelaySet(mi, 1)
}

//go:build linux

package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// Real middleboxes (issue 9): the client, a router and the server each in a
// network namespace, the middlebox on the router. Plain grpc-go and
// grpcguard's DialOptions() with default options run the same schedule side
// by side, over TCP and TLS: calls after quiet gaps of 0.6-1.6 s around the
// middlebox's 1 s idle timeout, alternating Get (idempotent by its proto
// option) and Echo (not). Every call carries an id and the server counts
// how often each id ran.
//
// The three middleboxes run concurrently: about 50 s in all.

// middleboxSeed draws the gaps; every client of a scenario gets the same.
const middleboxSeed = 9

// middleboxClients returns plain grpc-go and grpcguard over TCP and TLS. The
// grpcguard clients use DialOptions with default options and their own
// metrics; own and foreign count their conns (see nsGuardOptions).
func middleboxClients(own, foreign *atomic.Int64) []netns.Client {
	var clients []netns.Client
	for _, tls := range []bool{false, true} {
		transport := "TCP"
		if tls {
			transport = "TLS"
		}
		m := NewMetrics()
		reg := prometheus.NewRegistry()
		reg.MustRegister(m)
		clients = append(clients,
			netns.Client{Name: "plain grpc-go " + transport, TLS: tls,
				Options: func(ns netns.Namespace) ([]grpc.DialOption, error) {
					return []grpc.DialOption{grpc.WithContextDialer(ns.DialContext)}, nil
				}},
			netns.Client{Name: "grpcguard " + transport, TLS: tls, Metrics: reg,
				Options: func(ns netns.Namespace) ([]grpc.DialOption, error) {
					return nsGuardOptions(ns, own, foreign, WithMetrics(m))
				}})
	}
	return clients
}

// runMiddlebox runs s with middleboxClients on issue 9's schedule (1 s idle
// timeout, 40 calls after gaps of 0.6-1.6 s) and logs every row.
func runMiddlebox(t *testing.T, s netns.Scenario) []netns.Result {
	t.Helper()
	var own, foreign atomic.Int64
	start := time.Now()
	s.Seed, s.Idle, s.Calls = middleboxSeed, time.Second, 40
	s.MinGap, s.MaxGap = 600*time.Millisecond, 1600*time.Millisecond
	res, err := netns.Run(context.Background(), s, middleboxClients(&own, &foreign))
	if errors.Is(err, netns.ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%v, %d calls per client after quiet gaps of %v-%v, in %v:", s.Middlebox, s.Calls,
		s.MinGap, s.MaxGap, time.Since(start).Round(100*time.Millisecond))
	for _, r := range res {
		t.Log(formatMiddleboxResult(r))
	}
	if foreign.Load() != 0 || own.Load() == 0 {
		t.Fatalf("grpcguard clients dialed %d conns of the Dialer's own and %d others: not testing grpcguard", own.Load(), foreign.Load())
	}
	return res
}

func formatMiddleboxResult(r netns.Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  %-18s %d calls, failed %d (idempotent %d), ran once %d, twice %d, p50 %v, p99 %v",
		r.Client, r.Calls, r.Failed, r.IdemFailed, r.RanOnce, r.RanTwice,
		r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond))
	if g := r.Guard; g != nil {
		fmt.Fprintf(&b, "; stale %v, verifications %v, retired %d, idle horizon %v, retried %d (unprocessed %d)",
			g.Stale, g.Verifications, g.Retired, g.Horizon.Round(time.Millisecond), g.Retried, g.Unprocessed)
	}
	for _, e := range r.Errors {
		b.WriteString("\n      " + e)
	}
	return b.String()
}

// checkGuardKeptPromise fails t unless every grpcguard call succeeded and ran
// exactly once on the server.
func checkGuardKeptPromise(t *testing.T, res []netns.Result) {
	t.Helper()
	for _, r := range res {
		if r.Guard == nil {
			continue
		}
		if r.Failed != 0 || r.RanTwice != 0 || r.RanOnce != r.Calls {
			t.Errorf("%v, %s: %d of %d calls failed (%d idempotent), %d ran twice, %d ran exactly once; want every call to succeed and run once",
				r.Scenario, r.Client, r.Failed, r.Calls, r.IdemFailed, r.RanTwice, r.RanOnce)
		}
	}
}

// TestMiddleboxConntrack: behind a stateful firewall that forgets a flow
// after 1 s idle and answers its next packet with RST (what a NAT gateway or
// NLB does), grpcguard with default options fails no call and runs none
// twice, over TCP and TLS. Plain grpc-go must fail at least once on each, or
// the firewall did not do its job.
func TestMiddleboxConntrack(t *testing.T) {
	skipUnlessNetns(t, netns.Conntrack.Tools()...)
	t.Parallel()
	res := runMiddlebox(t, netns.Scenario{Middlebox: netns.Conntrack})
	for _, r := range res {
		if r.Guard == nil && r.Failed == 0 {
			t.Errorf("%s failed no call: the firewall reset nothing, the scenario did not happen", r.Client)
		}
	}
	checkGuardKeptPromise(t, res)
}

// TestMiddleboxHAProxy: behind HAProxy closing idle connections after 1 s,
// with a FIN, or a FIN and a RST (option nolinger), grpcguard fails no call
// and runs none twice; it saw the closes (stale connections counted).
func TestMiddleboxHAProxy(t *testing.T) {
	skipUnlessNetns(t, netns.HAProxyFIN.Tools()...)
	t.Parallel()
	for _, mb := range []netns.Middlebox{netns.HAProxyFIN, netns.HAProxyRST} {
		t.Run(mb.String(), func(t *testing.T) {
			t.Parallel()
			res := runMiddlebox(t, netns.Scenario{Middlebox: mb})
			for _, r := range res {
				if r.Guard != nil && r.Guard.StaleTotal() == 0 {
					t.Errorf("%s counted no stale connection: HAProxy closed nothing, the scenario did not happen", r.Client)
				}
			}
			checkGuardKeptPromise(t, res)
		})
	}
}

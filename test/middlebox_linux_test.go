//go:build linux

package test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/grpcguard/grpcguard/internal/testutil"
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
// The middleboxes run concurrently. The longest is a conntrack firewall that
// forgets flows after 5 s, with 10 calls after gaps of 6-9 s: about 75 s in
// all.

// middleboxSeed draws the gaps; every client of a scenario gets the same.
const middleboxSeed = 9

// middleboxClients returns plain grpc-go and grpcguard over TCP and TLS. The
// grpcguard clients use DialOptions with default options (nsGuardOptions)
// and their own metrics, on the registries returned by client name.
func middleboxClients(t *testing.T) ([]netns.Client, map[string]*testutil.Registry) {
	var clients []netns.Client
	regs := map[string]*testutil.Registry{}
	for _, tls := range []bool{false, true} {
		transport := "TCP"
		if tls {
			transport = "TLS"
		}
		m := grpcguard.NewMetrics()
		name := "grpcguard " + transport
		regs[name] = testutil.NewRegistry(t, m)
		clients = append(clients,
			netns.Client{Name: "plain grpc-go " + transport, TLS: tls,
				Options: func(ns netns.Namespace) ([]grpc.DialOption, error) {
					return []grpc.DialOption{grpc.WithContextDialer(ns.DialContext)}, nil
				}},
			netns.Client{Name: name, TLS: tls, Metrics: regs[name],
				Options: func(ns netns.Namespace) ([]grpc.DialOption, error) {
					return nsGuardOptions(ns, m, defaultSockets)
				}})
	}
	return clients, regs
}

func formatMiddleboxResult(r netns.Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  %-18s %d calls, failed %d (idempotent %d), ran once %d, twice %d, p50 %v, p99 %v",
		r.Client, r.Calls, r.Failed, r.IdemFailed, r.RanOnce, r.RanTwice,
		r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond))
	if g := r.Guard; g != nil {
		fmt.Fprintf(&b, "; dials %d, stale %v, verifications %v, retired %d, idle horizon %v, keepalive %v, retried %d (unprocessed %d)",
			g.Dials, g.Stale, g.Verifications, g.Retired, g.Horizon.Round(time.Millisecond), g.KeepAlive, g.Retried, g.Unprocessed)
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

// TestMiddlebox runs the three middleboxes at once, each in its own
// namespaces, and checks each in a subtest; one whose tool is missing is
// skipped with one line. (-run 'TestMiddlebox/NAME' reports one, but all
// three run.)
//
//   - conntrack: a stateful firewall forgets a flow after 1 s idle and
//     answers its next packet with RST (what a NAT gateway or NLB does).
//     grpcguard fails no call and runs none twice, over TCP and TLS; plain
//     grpc-go must fail at least once on each, or the firewall did nothing.
//   - haproxy-fin, haproxy-rst: HAProxy closes connections idle for 1 s
//     with a FIN, or a FIN and at once a RST (option nolinger). grpcguard
//     fails no call and runs none twice, and counted the closes as stale
//     connections.
//   - conntrack-5s: the firewall forgets flows after 5 s and calls come
//     after 6-9 s (issue 17). The first reset shortens keepalive below 5 s
//     (grpcguard_keepalive_seconds), which keeps the flows alive from then
//     on: grpcguard fails nothing, runs nothing twice, and dials at most 2
//     conns per client for the 10 calls (plain grpc-go must fail some, or
//     the firewall did nothing).
func TestMiddlebox(t *testing.T) {
	skipUnlessNetns(t)
	scenarios := []netns.Scenario{{Middlebox: netns.Conntrack}, {Middlebox: netns.HAProxyFIN}, {Middlebox: netns.HAProxyRST}, {Middlebox: netns.Conntrack}}
	for i := range scenarios {
		s := &scenarios[i]
		s.Seed, s.Idle, s.Calls = middleboxSeed, time.Second, 40
		s.MinGap, s.MaxGap = 600*time.Millisecond, 1600*time.Millisecond
	}
	long := &scenarios[3]
	long.Idle, long.Calls, long.MinGap, long.MaxGap = 5*time.Second, 10, 6*time.Second, 9*time.Second
	long.CallTimeout = 10 * time.Second
	name := func(s netns.Scenario) string {
		if s.Idle != time.Second {
			return fmt.Sprintf("%v-%v", s.Middlebox, s.Idle)
		}
		return s.Middlebox.String()
	}
	var skipped []string
	for _, s := range scenarios {
		if err := netns.Check(s.Middlebox.Tools()...); err != nil && !slices.Contains(skipped, err.Error()) {
			skipped = append(skipped, err.Error())
		}
	}
	if len(skipped) == 2 { // neither nft nor haproxy: say both, on one line
		t.Skipf("skipped: %s", strings.Join(skipped, "; "))
	}
	var regs [4]map[string]*testutil.Registry
	start := time.Now()
	results, errs := netns.RunAll(context.Background(), scenarios, func(s netns.Scenario) []netns.Client {
		i := slices.IndexFunc(scenarios, func(x netns.Scenario) bool { return x.Middlebox == s.Middlebox && x.Idle == s.Idle })
		var clients []netns.Client
		clients, regs[i] = middleboxClients(t)
		return clients
	})
	took := time.Since(start)
	for i, s := range scenarios {
		t.Run(name(s), func(t *testing.T) {
			if errors.Is(errs[i], netns.ErrUnsupported) {
				t.Skipf("skipped: %v", errs[i])
			}
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			t.Logf("%v: %d calls per client after quiet gaps of %v-%v (all scenarios at once: %v)",
				s.Middlebox, s.Calls, s.MinGap, s.MaxGap, took.Round(100*time.Millisecond))
			for _, r := range results[i] {
				t.Log(formatMiddleboxResult(r))
			}
			for name, reg := range regs[i] {
				checkProbed(t, name, reg)
			}
			for _, r := range results[i] {
				switch {
				case r.Guard == nil && s.Middlebox == netns.Conntrack && r.Failed == 0:
					t.Errorf("%s failed no call: the firewall reset nothing, the scenario did not happen", r.Client)
				case r.Guard != nil && s.Middlebox != netns.Conntrack && r.Guard.StaleTotal() == 0:
					t.Errorf("%s counted no stale connection: HAProxy closed nothing, the scenario did not happen", r.Client)
				}
			}
			checkGuardKeptPromise(t, results[i])
			if s.Idle > time.Second {
				for _, r := range results[i] {
					if r.Guard != nil && r.Guard.Dials > 2 {
						t.Errorf("%s dialed %d conns for %d calls; want at most 2: keepalive should keep the flow alive after the first reset", r.Client, r.Guard.Dials, r.Calls)
					}
					if r.Guard != nil && (r.Guard.KeepAlive <= 0 || r.Guard.KeepAlive >= s.Idle) {
						t.Errorf("%s: keepalive %v after the first reset, want it shortened below the firewall's %v", r.Client, r.Guard.KeepAlive, s.Idle)
					}
				}
			}
		})
	}
}

//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// The real-middlebox scenarios: the client, a router and the server each in
// a network namespace made for the run (internal/netns), the middlebox on
// the router, its idle timeout 1 s, calls after quiet gaps of 0.6-1.6 s.
// They need root, iproute2 and nft (the conntrack firewall) or haproxy.

// middleboxScenario is the -scenario name that runs only these.
const middleboxScenario = "middlebox"

// runMiddleboxes runs the real-middlebox scenarios when only is "all" or
// middleboxScenario, writes their rows to tw as the fault scenarios' are
// written, and reports whether every grpcguard row kept its promise and how
// many scenarios ran. A scenario the machine cannot run gets one line saying
// why instead.
func runMiddleboxes(tw io.Writer, only string, rpcs int, seed uint64, reg *prometheus.Registry) (ok bool, ran int) {
	if only != "all" && only != middleboxScenario {
		return true, 0
	}
	if err := netns.Check(); err != nil {
		fmt.Fprintf(tw, "real middleboxes skipped: %v\n", err)
		return true, 0
	}
	var scenarios []netns.Scenario
	for _, mb := range []netns.Middlebox{netns.Conntrack, netns.HAProxyFIN, netns.HAProxyRST} {
		if err := netns.Check(mb.Tools()...); err != nil {
			fmt.Fprintf(tw, "%v skipped: %v\n", mb, err)
			continue
		}
		scenarios = append(scenarios, netns.Scenario{Middlebox: mb, Calls: rpcs, Seed: seed})
	}
	if len(scenarios) == 0 {
		return true, 0
	}
	var done atomic.Int64
	total := int64(2 * rpcs * len(scenarios))
	for i := range scenarios {
		scenarios[i].Progress = func() { done.Add(1) }
	}
	stop := progressLine(func() string {
		return fmt.Sprintf("real middleboxes (1 s idle timeout, calls after 0.6-1.6 s): %d/%d calls", done.Load(), total)
	})
	results, errs := netns.RunAll(context.Background(), scenarios, func(s netns.Scenario) []netns.Client {
		return middleboxClients(s.Middlebox.String(), reg)
	})
	stop()
	ok = true
	for i, s := range scenarios {
		name := s.Middlebox.String() + " (netns)"
		if errors.Is(errs[i], netns.ErrUnsupported) {
			fmt.Fprintf(tw, "%s skipped: %v\n", name, errs[i])
			continue
		}
		if errs[i] != nil {
			fmt.Fprintf(tw, "%s could not run: %v\n", name, errs[i])
			continue
		}
		rows := make([]result, len(results[i]))
		for j, r := range results[i] {
			rows[j] = result{client: r.Client, rpcs: r.Calls, failed: r.Failed, idemFailed: r.IdemFailed,
				duplicates: r.NonIdemRanTwice, p50: r.P50, p99: r.P99}
			if g := r.Guard; g != nil {
				rows[j].guarded = true
				rows[j].retried, rows[j].unprocessed, rows[j].hedged = g.Retried, g.Unprocessed, g.Hedged
				rows[j].stale, rows[j].retired = g.StaleTotal(), g.Retired
			}
		}
		writeRows(tw, name, rows)
		ran++
		if !keptPromise(scenario{name: name}, rows[0], rows[1]) {
			ok = false
		}
	}
	return ok, ran
}

// middleboxClients returns a plain grpc-go client and a grpcguard one with
// default options, both dialing from the client namespace. The grpcguard
// client is DialOptions() with a dial function that dials from there, with
// the socket options grpcguard's own Dialer sets by default (a dial
// function's conns get none from grpcguard: its dialer owns them).
func middleboxClients(scenario string, reg *prometheus.Registry) []netns.Client {
	m := grpcguard.NewMetrics(grpcguard.WithConstLabels(prometheus.Labels{"scenario": scenario + "-netns"}))
	reg.MustRegister(m)
	own := prometheus.NewRegistry() // this client's series alone, for its row
	own.MustRegister(m)
	dialFromHere := guardNetDialer()
	return []netns.Client{
		{Name: "plain grpc-go", Options: func(ns netns.Namespace) ([]grpc.DialOption, error) {
			return []grpc.DialOption{grpc.WithContextDialer(ns.DialContext)}, nil
		}},
		{Name: "grpcguard", Metrics: own, Options: func(ns netns.Namespace) ([]grpc.DialOption, error) {
			return grpcguard.DialOptions(grpcguard.WithMetrics(m), grpcguard.WithDialFunc(ns.Wrap(dialFromHere)))
		}},
	}
}

// guardNetDialer returns a dial function that dials TCP with the socket
// options grpcguard's own Dialer sets by default (keepalive, TCP_USER_TIMEOUT):
// a dial function's conns get none from grpcguard, since its Dialer does not
// own them. Wrap it with Namespace.Wrap to dial from a namespace.
func guardNetDialer() netns.DialFunc {
	nd := &net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: grpcguard.DefaultKeepAliveIdle,
			Interval: grpcguard.DefaultKeepAliveInterval, Count: grpcguard.DefaultKeepAliveCount},
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(grpcguard.DefaultUserTimeout/time.Millisecond))
			})
			return errors.Join(err, serr)
		},
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		return nd.DialContext(ctx, "tcp", addr)
	}
}

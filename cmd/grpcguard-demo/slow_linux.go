//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
)

// The slow row: a conntrack firewall that forgets a flow idle 5 s (a NAT
// gateway with a short idle timeout), 15 Echo calls (not idempotent) after
// quiet gaps of 6-9 s, so every call finds its flow forgotten unless
// something kept it alive. It shows what each client pays for that: calls
// failed, calls the server ran twice, and dials. About 2 minutes.
var slowConntrack = netns.Scenario{
	Middlebox: netns.Conntrack,
	Idle:      5 * time.Second,
	Calls:     15,
	MinGap:    6 * time.Second,
	MaxGap:    9 * time.Second,
	Method:    testsvc.Echo,
}

// countDials returns dial with every call counted in n, failed or not.
func countDials(n *atomic.Int64, dial netns.DialFunc) netns.DialFunc {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		n.Add(1)
		return dial(ctx, addr)
	}
}

// runSlowConntrack runs the slow row for plain grpc-go and grpcguard with
// default options, writes its table to out, and reports whether grpcguard
// ran no call twice. A machine that cannot run it gets one line saying why.
func runSlowConntrack(out io.Writer, seed uint64) (ok bool) {
	s := slowConntrack
	s.Seed = seed
	title := fmt.Sprintf("conntrack firewall forgetting flows idle %v (netns), %d Echo calls after %v-%v", s.Idle, s.Calls, s.MinGap, s.MaxGap)
	if err := netns.Check(s.Middlebox.Tools()...); err != nil {
		fmt.Fprintf(out, "\n%s: skipped: %v\n", title, err)
		return true
	}
	var dials [2]atomic.Int64
	dialFromHere := guardNetDialer()
	clients := []netns.Client{
		{Name: "plain grpc-go", Options: func(ns netns.Namespace) ([]grpc.DialOption, error) {
			return []grpc.DialOption{grpc.WithContextDialer(countDials(&dials[0], ns.DialContext))}, nil
		}},
		{Name: "grpcguard", Options: func(ns netns.Namespace) ([]grpc.DialOption, error) {
			return grpcguard.DialOptions(grpcguard.WithDialFunc(countDials(&dials[1], ns.Wrap(dialFromHere))))
		}},
	}
	var done atomic.Int64
	s.Progress = func() { done.Add(1) }
	stop := progressLine(func() string {
		return fmt.Sprintf("conntrack %v, calls after %v-%v: %d/%d calls", s.Idle, s.MinGap, s.MaxGap, done.Load(), 2*s.Calls)
	})
	results, err := netns.Run(context.Background(), s, clients)
	stop()
	if errors.Is(err, netns.ErrUnsupported) {
		fmt.Fprintf(out, "\n%s: skipped: %v\n", title, err)
		return true
	}
	if err != nil {
		fmt.Fprintf(out, "\n%s: could not run: %v\n", title, err)
		return false
	}
	fmt.Fprintf(out, "\n%s:\n", title)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "client\tcalls\tfailed\tran twice\tdials\tp50\tp99\t")
	for i, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t\n", r.Client, r.Calls, r.Failed, r.NonIdemRanTwice, dials[i].Load(), fineMs(r.P50), fineMs(r.P99))
	}
	tw.Flush()
	fmt.Fprintln(out, "Dials count every call of the client's dial function, the first included.")
	for _, r := range results {
		for _, e := range r.Errors {
			fmt.Fprintf(out, "%s: %s\n", r.Client, e)
		}
	}
	return results[1].NonIdemRanTwice == 0
}

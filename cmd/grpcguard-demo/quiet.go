package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The quiet-caller measurement: what grpcguard costs a client that calls
// now and then on a healthy path. Plain grpc-go (grpc.NewClient, default
// dialer) and grpcguard (DialOptions with default options) each hold one
// connection to the same grpc-go server and make one Echo call a round,
// after the same quiet gap drawn from [minGap, maxGap] with a seeded RNG.
// Within a round grpcguard calls half the smallest gap after plain grpc-go,
// so that each call finds the process quiet (a call right after another
// finds the machine awake and is faster, whoever makes it). Nothing fails on
// purpose: it measures the price, not the protection.
//
// Paths: loopback (127.0.0.1), and delay (Linux, root: the client and the
// server in two network namespaces joined by internal/netns's delay wire,
// 10 ms each way, so TCP, keepalive probes included, crosses a real RTT).

// quietScenario is the -scenario name that runs only the quiet callers.
const quietScenario = "quiet"

// slowScenario is the -scenario name that runs only the slow row (see
// runSlowConntrack), which -slow adds to any run.
const slowScenario = "conntrack-5s"

// quietOneWay is the delay path's one-way delay.
const quietOneWay = 10 * time.Millisecond

// quietWire is where a quiet run's server listens and how its clients reach
// it.
type quietWire struct {
	name   string
	listen func() (net.Listener, error)
	// plain and guard are the clients' extra options: a dial function when
	// the path needs one; none on loopback, where both dial as they would
	// by default.
	plain []grpc.DialOption
	guard []grpcguard.Option
	close func() error
}

func loopbackWire() (*quietWire, error) {
	return &quietWire{
		name:   "loopback",
		listen: func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
		close:  func() error { return nil },
	}, nil
}

// quietRow is one client's row.
type quietRow struct {
	client        string
	calls, failed int
	conns         int // connections the server accepted from it
	checked       int // calls that waited for a path check (grpcguard)
	p50, p99      time.Duration
}

// quietResult is one path's measurement.
type quietResult struct {
	plain, guard quietRow
	// ratio is the median over rounds of grpcguard's latency over plain's,
	// rounds where both succeeded.
	ratio float64
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// runQuiet runs the quiet callers on w for rounds rounds; done is called
// after each round.
func runQuiet(w *quietWire, rounds int, minGap, maxGap time.Duration, seed uint64, done func()) (quietResult, error) {
	// One server, one listener per client: the accepts are the dials each
	// client's connections cost, counted without touching its dialer.
	gs := grpc.NewServer()
	(&testsvc.Server{}).Register(gs)
	var lns [2]*countingListener
	for i := range lns {
		ln, err := w.listen()
		if err != nil {
			gs.Stop()
			return quietResult{}, err
		}
		lns[i] = &countingListener{Listener: ln}
		go gs.Serve(lns[i])
	}
	defer gs.Stop()

	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	plain, err := grpc.NewClient("passthrough:///"+lns[0].Addr().String(), append([]grpc.DialOption{creds}, w.plain...)...)
	if err != nil {
		return quietResult{}, err
	}
	defer plain.Close()
	m := grpcguard.NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	gopts, err := grpcguard.DialOptions(append(w.guard[:len(w.guard):len(w.guard)], grpcguard.WithMetrics(m))...)
	if err != nil {
		return quietResult{}, err
	}
	guard, err := grpc.NewClient("passthrough:///"+lns[1].Addr().String(), append([]grpc.DialOption{creds}, gopts...)...)
	if err != nil {
		return quietResult{}, err
	}
	defer guard.Close()

	call := func(cc *grpc.ClientConn, req string) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		_, err := testsvc.Call(ctx, cc, testsvc.Echo, req)
		return time.Since(start), err
	}
	for _, cc := range []*grpc.ClientConn{plain, guard} { // connect; not counted
		if _, err := call(cc, "warm-up"); err != nil {
			return quietResult{}, fmt.Errorf("quiet %s: warm-up call: %w", w.name, err)
		}
	}

	res := quietResult{plain: quietRow{client: "plain grpc-go"}, guard: quietRow{client: "grpcguard"}}
	rows := [2]*quietRow{&res.plain, &res.guard}
	ccs := [2]*grpc.ClientConn{plain, guard}
	var lat [2][]time.Duration
	var ratios []float64
	r := rand.New(rand.NewPCG(seed, 17))
	half := minGap / 2
	for i := range rounds {
		gap := minGap + time.Duration(r.Int64N(int64(maxGap-minGap)+1))
		var took [2]time.Duration
		var failed [2]bool
		for c := range 2 {
			// Plain at T, grpcguard at T+half, plain again at T+gap: each
			// client's calls are gap apart, and each call comes after at
			// least half of the process being quiet, so neither pays for
			// the other's warming the machine up.
			if c == 0 {
				time.Sleep(gap - half)
			} else {
				time.Sleep(half)
			}
			d, err := call(ccs[c], fmt.Sprintf("round-%d", i))
			took[c], failed[c] = d, err != nil
			lat[c] = append(lat[c], d)
			rows[c].calls++
			if err != nil {
				rows[c].failed++
			}
		}
		if !failed[0] && !failed[1] {
			ratios = append(ratios, float64(took[1])/float64(took[0]))
		}
		if done != nil {
			done()
		}
	}
	for c := range 2 {
		slices.Sort(lat[c])
		rows[c].p50, rows[c].p99 = quantile(lat[c], 0.50), quantile(lat[c], 0.99)
		rows[c].conns = int(lns[c].n.Load())
	}
	res.guard.checked = pathChecks(reg)
	slices.Sort(ratios)
	if len(ratios) > 0 {
		res.ratio = ratios[len(ratios)/2]
		if len(ratios)%2 == 0 {
			res.ratio = (ratios[len(ratios)/2-1] + ratios[len(ratios)/2]) / 2
		}
	}
	return res, nil
}

// runQuietRows runs the quiet callers on each path and writes their table
// to out. For a measurement the paths run one after the other (they would
// share the CPUs); atOnce runs them side by side, each with its own gaps, to
// keep the demo's default run short. A path the machine cannot build gets
// one line saying why.
func runQuietRows(out io.Writer, paths []string, rounds int, minGap, maxGap time.Duration, seed uint64, atOnce bool) error {
	type outcome struct {
		name string
		res  quietResult
		skip error // the path cannot be built here
		err  error
	}
	outs := make([]outcome, len(paths))
	var n atomic.Int64
	stop := progressLine(func() string {
		return fmt.Sprintf("quiet callers (%s): %d/%d rounds", strings.Join(paths, ", "), n.Load(), rounds*len(paths))
	})
	measure := func(i int) {
		w, err := quietPath(paths[i])
		if err != nil {
			outs[i] = outcome{name: paths[i], skip: err}
			return
		}
		res, err := runQuiet(w, rounds, minGap, maxGap, seed+uint64(i), func() { n.Add(1) })
		outs[i] = outcome{name: w.name, res: res, err: errors.Join(err, w.close())}
	}
	var wg sync.WaitGroup
	for i := range paths {
		if atOnce {
			wg.Add(1)
			go func() { defer wg.Done(); measure(i) }()
		} else {
			measure(i)
		}
	}
	wg.Wait()
	stop()

	how := "one path after the other"
	if atOnce {
		how = "the paths at once (-scenario quiet runs them one after the other)"
	}
	fmt.Fprintf(out, "\nQuiet callers: one Echo call every %v-%v, no faults, %d rounds, %s.\n", minGap, maxGap, rounds, how)
	fmt.Fprintln(out, "Plain grpc-go and grpcguard (DialOptions, default options) on the same gaps, grpcguard half the smallest gap later, against one server.")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tclient\tcalls\tfailed\tconns\tpath-checked\tp50\tp99\tgrpcguard/plain (median of rounds)\t")
	var skipped []string
	for _, o := range outs {
		if o.err != nil {
			return fmt.Errorf("quiet callers on %s: %w", o.name, o.err)
		}
		if o.skip != nil {
			skipped = append(skipped, fmt.Sprintf("%s skipped: %v", o.name, o.skip))
			continue
		}
		for i, r := range []quietRow{o.res.plain, o.res.guard} {
			name, ratio, checked := o.name, "", "-"
			if i > 0 {
				name, ratio, checked = "", fmt.Sprintf("%.2fx", o.res.ratio), fmt.Sprint(r.checked)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", name, r.client, r.calls, r.failed, r.conns, checked, fineMs(r.p50), fineMs(r.p99), ratio)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range skipped {
		fmt.Fprintln(out, s)
	}
	return nil
}

// pathChecks reads how many path checks waited for a round trip (every
// result but known_alive, which is a check not needed).
func pathChecks(g prometheus.Gatherer) int {
	mfs, _ := g.Gather()
	n := 0
	for _, mf := range mfs {
		if mf.GetName() != "grpcguard_verifications_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() != "known_alive" {
					n += int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return n
}

// quietPath returns the wire named p.
func quietPath(p string) (*quietWire, error) {
	switch p {
	case "loopback":
		return loopbackWire()
	case "delay":
		return delayWire(quietOneWay)
	}
	return nil, fmt.Errorf("unknown path %q (want loopback, delay)", p)
}

// parsePaths splits the -quiet-paths flag.
func parsePaths(s string) ([]string, error) {
	var paths []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if p != "loopback" && p != "delay" {
			return nil, fmt.Errorf("-quiet-paths: unknown path %q (want loopback, delay)", p)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// fineMs is ms with the resolution a loopback call needs.
func fineMs(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/1e6) }

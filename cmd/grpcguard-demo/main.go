// Command grpcguard-demo shows the problem grpcguard solves and the fix, side
// by side, on this machine, with nothing to set up.
//
// For each scenario it starts a real grpc-go server behind a fault proxy on
// 127.0.0.1 and runs the same calls through a plain grpc-go client and a
// grpcguard client (grpcguard.DialOptions), each with its own server and
// proxy. Calls alternate between an idempotent method (Get, declared
// NO_SIDE_EFFECTS in its proto) and a non-idempotent one (Echo), with quiet
// gaps around the proxy's idle time. The idle-race scenario is the seed's
// race: only Echo, gaps at 0.97 to 1.03 of the idle time, so the close and
// the next call meet. It prints one table and exits 0 when every grpcguard row
// keeps the promise: no idempotent call failed, no call ran twice on the
// server, at most 3 calls failed while it learned the idle horizon (idle-race),
// and (long tail) hedging cut the p99.
//
// After the table come the quiet callers (quiet.go): what grpcguard costs a
// client calling every 1.2-2.5 s on a healthy path, over loopback and, as
// root on Linux, over a wire with 10 ms each way; 8 rounds by default, which
// is a glimpse, not a measurement. -slow adds a conntrack firewall that
// forgets flows idle 5 s (slow_linux.go), about 2 minutes.
//
//	go run ./cmd/grpcguard-demo
//	go run ./cmd/grpcguard-demo -scenario reset-first-bytes -rpcs 48 -metrics 127.0.0.1:9090
//
// The measurements (as root for the delay path and the firewall; build first
// so that the compiler does not share the CPUs with the first rounds):
//
//	go build -o /tmp/grpcguard-demo ./cmd/grpcguard-demo
//	/tmp/grpcguard-demo -scenario quiet -quiet-rounds 30                          # both paths, ~2 min
//	/tmp/grpcguard-demo -scenario quiet -quiet-rounds 30 -quiet-paths loopback    # ~1 min
//	/tmp/grpcguard-demo -scenario conntrack-5s                                    # ~2 min
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

type scenario struct {
	name string
	mode faultproxy.Mode
	race bool // the seed's race: Echo only, gaps right at the idle time, FIN, RST or reset per conn
	tail bool // the long-tail server, no faults
}

var scenarios = []scenario{
	{name: "fin-after-idle", mode: faultproxy.FINAfterIdle},
	{name: "rst-after-idle", mode: faultproxy.RSTAfterIdle},
	{name: "half-close", mode: faultproxy.HalfCloseAfterIdle},
	{name: "reset-first-bytes", mode: faultproxy.ResetFirstBytesAfterIdle},
	{name: "idle-race", race: true},
	{name: "long-tail", tail: true},
}

// raceFailuresAllowed is what the idle-race scenario may lose while the
// Dialer learns the idle horizon from the first deaths.
const raceFailuresAllowed = 3

// result is one client's row.
type result struct {
	client                    string
	rpcs, failed, idemFailed  int
	retried, unprocessed      int
	hedged, stale, duplicates int
	retired                   int
	p50, p99                  time.Duration
	guarded                   bool
}

func main() {
	var (
		only    = flag.String("scenario", "all", "scenario to run: all, "+names())
		rpcs    = flag.Int("rpcs", 24, "calls per client in each fault scenario (the long tail makes 20x as many)")
		idle    = flag.Duration("idle", 150*time.Millisecond, "the proxy's idle time before it acts")
		seed    = flag.Uint64("seed", 1, "seed for the gaps between calls and the server's tail")
		metrics = flag.String("metrics", "", "serve the grpcguard clients' /metrics on this address (127.0.0.1:PORT) while running")

		quietRounds = flag.Int("quiet-rounds", 16, "quiet callers: rounds (one call per client each); 30 for a measurement")
		quietMinGap = flag.Duration("quiet-min-gap", 1200*time.Millisecond, "quiet callers: shortest quiet gap before a round")
		quietMaxGap = flag.Duration("quiet-max-gap", 2500*time.Millisecond, "quiet callers: longest quiet gap before a round")
		slow        = flag.Bool("slow", false, "also run the slow row (-scenario "+slowScenario+"): a conntrack firewall forgetting flows idle 5 s, 15 Echo calls after 6-9 s, ~2 min (Linux, root, nft)")
		quietPaths  = flag.String("quiet-paths", "loopback,delay", "quiet callers: paths, comma-separated: loopback, delay (Linux, root: 10 ms each way)")
	)
	flag.Parse()
	if *rpcs < 2 || *idle <= 0 {
		fmt.Fprintln(os.Stderr, "grpcguard-demo: -rpcs must be at least 2 and -idle positive")
		os.Exit(2)
	}
	paths, err := parsePaths(*quietPaths)
	if err == nil && (*quietRounds < 1 || *quietMinGap < 0 || *quietMaxGap < *quietMinGap) {
		err = fmt.Errorf("-quiet-rounds must be at least 1 and 0 <= -quiet-min-gap <= -quiet-max-gap")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcguard-demo:", err)
		os.Exit(2)
	}
	reg := prometheus.NewRegistry()
	if *metrics != "" {
		if err := serveMetrics(*metrics, reg); err != nil {
			fmt.Fprintln(os.Stderr, "grpcguard-demo:", err)
			os.Exit(2)
		}
	}
	var run []scenario
	for _, s := range scenarios {
		if *only == "all" || *only == s.name {
			run = append(run, s)
		}
	}
	if len(run) == 0 && *only != middleboxScenario && *only != quietScenario && *only != slowScenario {
		fmt.Fprintf(os.Stderr, "grpcguard-demo: unknown scenario %q (want all, %s)\n", *only, names())
		os.Exit(2)
	}

	ok := true
	ran := 0
	start := time.Now()
	if *only != quietScenario && *only != slowScenario {
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "scenario\tclient\tRPCs\tfailed\tidempotent failed\tretried (unprocessed)\thedged\tstale conns\tretired\tran twice\tp50\tp99\t")
		for _, s := range run {
			m := grpcguard.NewMetrics(grpcguard.WithConstLabels(prometheus.Labels{"scenario": s.name}))
			reg.MustRegister(m)
			rows, err := runScenario(s, *rpcs, *idle, *seed, m, reg)
			if err != nil {
				fmt.Fprintln(os.Stderr, "\ngrpcguard-demo:", err)
				os.Exit(2)
			}
			writeRows(tw, s.name, rows)
			if !keptPromise(s, rows[0], rows[1]) {
				ok = false
			}
		}
		mbOK, mbRan := runMiddleboxes(tw, *only, *rpcs, *seed, reg)
		ok = mbOK && ok
		clearProgress()
		tw.Flush()
		ran += len(run) + mbRan
		fmt.Println("\nHalf the fault-scenario calls are Get (idempotent), half Echo (not). grpcguard retries a call only")
		fmt.Println("if it provably never left the client or its method is idempotent, so an Echo whose bytes left may")
		fmt.Println("still fail (reset-first-bytes): it is reported, never run twice. idle-race makes only Echo calls,")
		fmt.Println("with default options: grpcguard learns when idle connections die and retires them before that.")
	}
	if *only == "all" || *only == quietScenario {
		if err := runQuietRows(os.Stdout, paths, *quietRounds, *quietMinGap, *quietMaxGap, *seed, *only == "all"); err != nil {
			fmt.Fprintln(os.Stderr, "\ngrpcguard-demo:", err)
			os.Exit(2)
		}
		ran++
	}
	if *slow || *only == slowScenario {
		ok = runSlowConntrack(os.Stdout, *seed) && ok
		ran++
	}
	fmt.Printf("\n%d scenarios in %.1fs. ", ran, time.Since(start).Seconds())
	if !ok {
		fmt.Println("FAIL: a grpcguard row broke its promise (no idempotent call fails, no call runs twice, idle-race fails at most 3 while learning, hedging cuts the p99).")
		os.Exit(1)
	}
	fmt.Println("OK: grpcguard failed no idempotent call and ran no call twice.")
}

// writeRows writes one scenario's rows to the table.
func writeRows(tw io.Writer, scenario string, rows []result) {
	for i, r := range rows {
		name := scenario
		if i > 0 {
			name = ""
		}
		retried, hedged, stale, retired := "-", "-", "-", "-"
		if r.guarded {
			retried = fmt.Sprintf("%d (%d)", r.retried, r.unprocessed)
			hedged, stale, retired = fmt.Sprint(r.hedged), fmt.Sprint(r.stale), fmt.Sprint(r.retired)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t\n", name, r.client, r.rpcs, r.failed,
			r.idemFailed, retried, hedged, stale, retired, r.duplicates, ms(r.p50), ms(r.p99))
	}
}

// keptPromise is what the demo's exit status promises for a grpcguard row.
func keptPromise(s scenario, plain, guarded result) bool {
	switch {
	case guarded.idemFailed > 0, guarded.duplicates > 0:
		return false
	case s.race && guarded.failed > raceFailuresAllowed:
		return false
	case s.tail && guarded.p99 >= plain.p99:
		return false
	}
	return true
}

// progressOn reports whether stderr is a terminal: the progress line, which
// redraws itself, is only for a person watching.
var progressOn = func() bool {
	fi, err := os.Stderr.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}()

func clearProgress() {
	if progressOn {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
}

func names() string {
	var n []string
	for _, s := range scenarios {
		n = append(n, s.name)
	}
	return strings.Join(append(n, middleboxScenario, quietScenario, slowScenario), ", ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/1e6) }

func serveMetrics(addr string, reg *prometheus.Registry) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || (host != "127.0.0.1" && host != "localhost") {
		return fmt.Errorf("-metrics must be 127.0.0.1:PORT, got %q", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	go http.Serve(ln, mux)
	fmt.Fprintf(os.Stderr, "serving metrics on http://%s/metrics\n", addr)
	return nil
}

// runScenario runs the plain and the grpcguard client side by side.
func runScenario(s scenario, rpcs int, idle time.Duration, seed uint64, m *grpcguard.Metrics, reg *prometheus.Registry) ([]result, error) {
	var progress [2]atomic.Int64
	total := rpcs
	switch {
	case s.tail:
		total = 20 * rpcs
	case s.race:
		total = 4 * rpcs
	}
	if progressOn {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				fmt.Fprintf(os.Stderr, "\r\033[K%s: plain %d/%d, grpcguard %d/%d", s.name, progress[0].Load(), total, progress[1].Load(), total)
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
		defer func() { close(stop); wg.Wait() }()
	}

	rows := make([]result, 2)
	errs := make([]error, 2)
	var run sync.WaitGroup
	for i, guarded := range []bool{false, true} {
		run.Add(1)
		go func() {
			defer run.Done()
			rows[i], errs[i] = runClient(s, guarded, rpcs, idle, seed, m, &progress[i])
		}()
	}
	run.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	if err := readMetrics(reg, s.name, &rows[1]); err != nil {
		return nil, err
	}
	return rows, nil
}

// runClient runs one client against its own server and proxy.
func runClient(s scenario, guarded bool, rpcs int, idle time.Duration, seed uint64, m *grpcguard.Metrics, progress *atomic.Int64) (result, error) {
	srv := &testsvc.Server{}
	if s.tail {
		var mu sync.Mutex
		r := rand.New(rand.NewPCG(seed, 7))
		srv.Unary = func(ctx context.Context, _, req string) (string, error) {
			mu.Lock()
			d := 4 * time.Millisecond
			if r.Float64() < 0.05 {
				d = 80 * time.Millisecond // 5% of calls 20x slower
			}
			mu.Unlock()
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
			return req, nil
		}
	}
	addr, stopServer, err := testsvc.Serve(srv)
	if err != nil {
		return result{}, err
	}
	defer stopServer()
	pcfg := faultproxy.Config{Mode: s.mode, Idle: idle}
	if s.race {
		pcfg.Choose = faultproxy.Random(seed, faultproxy.FINAfterIdle, faultproxy.RSTAfterIdle, faultproxy.ResetFirstBytesAfterIdle)
	}
	p, err := faultproxy.Start(addr, pcfg)
	if err != nil {
		return result{}, err
	}
	defer p.Close()

	dopts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	res := result{client: "plain grpc-go", guarded: guarded}
	if guarded {
		res.client = "grpcguard"
		opts := []grpcguard.Option{grpcguard.WithMetrics(m)}
		if s.tail {
			opts = append(opts, grpcguard.WithAdaptiveHedgeDelay(0.95, 5*time.Millisecond, time.Second))
		}
		gopts, err := grpcguard.DialOptions(opts...)
		if err != nil {
			return result{}, err
		}
		dopts = append(dopts, gopts...)
	}
	cc, err := grpc.NewClient("passthrough:///"+p.Addr(), dopts...)
	if err != nil {
		return result{}, err
	}
	defer cc.Close()

	var lat []time.Duration
	call := func(method, req string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		t0 := time.Now()
		_, err := testsvc.Call(ctx, cc, method, req)
		lat = append(lat, time.Since(t0))
		if err != nil {
			res.failed++
			if method != testsvc.Echo {
				res.idemFailed++
			}
		}
		res.rpcs++
		progress.Add(1)
	}
	switch {
	case s.tail:
		lat = runTail(cc, 20*rpcs, progress, &res)
	case s.race:
		r := rand.New(rand.NewPCG(seed, 13))
		for i := range 4 * rpcs {
			time.Sleep(time.Duration(float64(idle) * (0.97 + 0.06*r.Float64()))) // right at the close
			call(testsvc.Echo, fmt.Sprintf("race-%d", i))
		}
	default:
		r := rand.New(rand.NewPCG(seed, 11)) // both clients see the same gaps
		for i := range rpcs {
			time.Sleep(time.Duration(r.Float64() * float64(2*idle))) // quiet around the idle time
			method := testsvc.Get
			if i%2 == 1 {
				method = testsvc.Echo
			}
			call(method, fmt.Sprintf("req-%d", i))
		}
	}
	res.duplicates = dupRuns(srv)
	slices.Sort(lat)
	res.p50, res.p99 = quantile(lat, 0.50), quantile(lat, 0.99)
	return res, nil
}

// runTail makes n idempotent calls from 8 callers after a warm-up that lets
// the adaptive hedge delay learn the latency.
func runTail(cc *grpc.ClientConn, n int, progress *atomic.Int64, res *result) []time.Duration {
	for i := range 40 {
		testsvc.Call(context.Background(), cc, testsvc.Get, fmt.Sprintf("warm-%d", i))
	}
	var mu sync.Mutex
	var lat []time.Duration
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				t0 := time.Now()
				_, err := testsvc.Call(ctx, cc, testsvc.Get, fmt.Sprintf("req-%d", i))
				cancel()
				mu.Lock()
				lat = append(lat, time.Since(t0))
				res.rpcs++
				if err != nil {
					res.failed++
					res.idemFailed++
				}
				mu.Unlock()
				progress.Add(1)
			}
		}()
	}
	wg.Wait()
	return lat
}

// dupRuns counts non-idempotent requests the server ran more than once.
// (Idempotent ones may run twice by design: hedging, retries.)
func dupRuns(srv *testsvc.Server) int {
	if n := srv.MaxRuns(testsvc.Echo); n > 1 {
		return n - 1
	}
	return 0
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

// readMetrics fills the grpcguard row from the scenario's series.
func readMetrics(reg *prometheus.Registry, scenario string, r *result) error {
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	for _, mf := range mfs {
		var dst *int
		switch mf.GetName() {
		case "grpcguard_retries_total":
			dst = &r.retried
		case "grpcguard_retries_unprocessed_total":
			dst = &r.unprocessed
		case "grpcguard_hedges_total":
			dst = &r.hedged
		case "grpcguard_stale_connections_total":
			dst = &r.stale
		case "grpcguard_connections_retired_total":
			dst = &r.retired
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "scenario" && l.GetValue() == scenario {
					*dst += int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return nil
}

// progressLine prints line() on stderr every 200ms until stop is called,
// only when stderr is a terminal (progressOn).
func progressLine(line func() string) (stop func()) {
	if !progressOn {
		return func() {}
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			fmt.Fprintf(os.Stderr, "\r\033[K%s", line())
			select {
			case <-quit:
				fmt.Fprint(os.Stderr, "\r\033[K")
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(quit); <-done }
}

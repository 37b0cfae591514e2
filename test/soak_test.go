package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// soakFull reports whether the long soak was asked for with
// GRPCGUARD_SOAK=full.
func soakFull() bool { return os.Getenv("GRPCGUARD_SOAK") == "full" }

// TestSoak is proof under load: 64 concurrent callers, through fault proxies
// that close idle connections with FIN or RST or reset the first bytes after
// idle, call idempotent (Get, Put) and non-idempotent (Echo) methods, each
// call with a unique request, on clients made by DialOptions with retry,
// adaptive hedging and metrics. It asserts that no idempotent call failed,
// that no Echo ran twice on the server, that no goroutine outlives the
// clients, proxies and server, and that the heap stays bounded.
//
// Two clients share the callers: one behind a proxy that only injects
// faults, one behind a proxy that also delays every forwarded chunk. A gate
// stops every caller now and then for one to two and a half proxy idle
// times, so that the proxies' idle faults fire and the callers come back as
// a herd onto the dead connection; every fourth quiet time ends with the
// proxies closing every connection (FIN or RST), since a connection the
// proxy chose to pass would otherwise live to the end; each caller also sleeps up to two idle
// times every few calls. About 2% of the idempotent calls are slow on the
// server so that hedges are sent on time, not only on failures.
//
// By default it makes about 3,000 RPCs (seconds under -race). Set
// GRPCGUARD_SOAK=full for the long run of at least 20,000 RPCs:
//
//	GRPCGUARD_SOAK=full go test -count=1 -run TestSoak -v ./test/
func TestSoak(t *testing.T) {
	before := goleak.IgnoreCurrent()
	const (
		callers   = 64
		idle      = 40 * time.Millisecond
		slowEvery = 50 // one idempotent call in slowEvery is slow on the server
		slowTime  = 15 * time.Millisecond
	)
	total := 3000
	if soakFull() {
		total = 24000
	}
	perCaller := total / callers

	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		// The scenario: a slow tail, only on first attempts so that a
		// hedge is fast.
		if method != testsvc.Echo && len(req) > 0 && req[0] == 's' && testutil.PreviousAttempts(ctx) == 0 {
			if err := slowFor(ctx, slowTime); err != nil {
				return "", err
			}
		}
		return req, nil
	}}
	addr, stopServer, err := testsvc.Serve(srv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopServer)
	modes := []faultproxy.Mode{faultproxy.FINAfterIdle, faultproxy.RSTAfterIdle, faultproxy.ResetFirstBytesAfterIdle, faultproxy.Pass}
	var proxies []*faultproxy.Proxy
	for i, delay := range []time.Duration{0, time.Millisecond} {
		p, err := faultproxy.Start(addr, faultproxy.Config{
			Choose: faultproxy.Random(uint64(0x50a4+i), modes...),
			Idle:   idle, Delay: delay, Lifetime: 10 * time.Minute,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		proxies = append(proxies, p)
	}

	m := grpcguard.NewMetrics()
	reg := testutil.NewRegistry(t, m)
	var ccs []*grpc.ClientConn
	for _, p := range proxies {
		dopts, err := grpcguard.DialOptions(grpcguard.WithMetrics(m), grpcguard.WithProbeAfterIdle(idle/4),
			// The default budget: one for retries and hedges, with a floor,
			// so that 32 callers failing at once early in the run can all
			// resend.
			grpcguard.WithAdaptiveHedgeDelay(0.95, 2*time.Millisecond, 100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient("passthrough:///"+p.Addr(),
			append(dopts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		ccs = append(ccs, cc)
	}

	// gate: callers hold it shared for each call; the quiet-maker holds it
	// alone for a quiet time, after every call in flight has ended.
	var gate sync.RWMutex
	done := make(chan struct{})
	quietDone := make(chan struct{})
	var quiets atomic.Int64
	go func() {
		defer close(quietDone)
		r := rand.New(rand.NewPCG(7, 7))
		for {
			busy := time.NewTimer(time.Duration(30+r.IntN(90)) * time.Millisecond)
			select {
			case <-done:
				busy.Stop()
				return
			case <-busy.C:
			}
			gate.Lock()
			time.Sleep(idle + time.Duration(r.Int64N(int64(3*idle/2)))) // the scenario: everyone is quiet
			// A conn the proxy chose to Pass would live to the end and
			// end the faults: every fourth quiet time ends with the
			// proxies closing every conn, as a restarting load balancer
			// does, so that new conns draw new modes.
			if n := quiets.Add(1); n%4 == 0 {
				for _, p := range proxies {
					p.CloseAll(n%8 == 0)
				}
			}
			gate.Unlock()
		}
	}()

	var (
		idemFailed, echoFailed, echoCalls atomic.Int64
		wg                                sync.WaitGroup
		latMu                             sync.Mutex
		lats                              = make([]time.Duration, 0, total)
		firstErrs                         = make(chan error, 5)
	)
	start := time.Now()
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 42))
			cc := ccs[c%len(ccs)]
			mine := make([]time.Duration, 0, perCaller)
			for i := range perCaller {
				if i%4 == 3 {
					time.Sleep(time.Duration(r.Int64N(int64(2 * idle)))) // the scenario: this caller is quiet
				}
				method := testsvc.Echo
				switch x := r.IntN(10); {
				case x < 4:
					method = testsvc.Get
				case x < 7:
					method = testsvc.Put
				}
				req := fmt.Sprintf("c%d-%d", c, i)
				if method != testsvc.Echo && r.IntN(slowEvery) == 0 {
					req = "s" + req
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				gate.RLock()
				t0 := time.Now()
				_, err := testsvc.Call(ctx, cc, method, req)
				el := time.Since(t0)
				gate.RUnlock()
				cancel()
				if method == testsvc.Echo {
					echoCalls.Add(1)
				}
				switch {
				case err == nil:
					mine = append(mine, el)
				case method == testsvc.Echo:
					echoFailed.Add(1)
				default:
					idemFailed.Add(1)
					select {
					case firstErrs <- fmt.Errorf("%s %s: %w", method, req, err):
					default:
					}
				}
			}
			latMu.Lock()
			lats = append(lats, mine...)
			latMu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(done)
	<-quietDone

	rpcs := callers * perCaller
	slices.Sort(lats)
	var stats []faultproxy.Stats
	for _, p := range proxies {
		stats = append(stats, p.Stats())
	}
	t.Logf("soak: %d RPCs by %d callers in %v (%.0f RPC/s), %d quiet gates; idempotent failed %d; Echo failed %d of %d (max runs of one Echo %d)",
		rpcs, callers, elapsed.Round(time.Millisecond), float64(rpcs)/elapsed.Seconds(), quiets.Load(),
		idemFailed.Load(), echoFailed.Load(), echoCalls.Load(), srv.MaxRuns(testsvc.Echo))
	t.Logf("soak: retries %v, unprocessed retries %v, retries throttled %v, hedges %v, hedge wins %v, hedges throttled %v, stale conns %d, probes stale %v, dials %v",
		metric(t, reg, "grpcguard_retries_total", nil), metric(t, reg, "grpcguard_retries_unprocessed_total", nil),
		metric(t, reg, "grpcguard_retries_throttled_total", nil), metric(t, reg, "grpcguard_hedges_total", nil),
		metric(t, reg, "grpcguard_hedge_wins_total", nil), metric(t, reg, "grpcguard_hedges_throttled_total", nil),
		stale(t, reg, ""), metric(t, reg, "grpcguard_probes_total", map[string]string{"result": "stale"}), metric(t, reg, "grpcguard_dials_total", nil))
	t.Logf("soak: proxy (faults) %+v; proxy (faults + 1ms delay) %+v; latency of successful calls p50 %v p99 %v max %v",
		stats[0], stats[1], percentile(lats, 0.50), percentile(lats, 0.99), percentile(lats, 1))

	if n := idemFailed.Load(); n > 0 {
		close(firstErrs)
		for err := range firstErrs {
			t.Errorf("idempotent call failed: %v", err)
		}
		t.Errorf("%d idempotent RPCs failed, want 0", n)
	}
	if n := srv.MaxRuns(testsvc.Echo); n > 1 {
		t.Errorf("a non-idempotent Echo ran %d times on the server, want at most 1", n)
	}
	var closes int64
	for _, st := range stats {
		closes += st.Closes()
	}
	if closes == 0 {
		t.Errorf("the proxies closed no connection: the faults did not happen")
	}

	for _, cc := range ccs {
		cc.Close()
	}
	for _, p := range proxies {
		p.Close()
	}
	stopServer()
	goleak.VerifyNone(t, before)

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("soak: heap in use after GC %.1f MiB, goroutines %d", float64(ms.HeapInuse)/(1<<20), runtime.NumGoroutine())
	if ms.HeapInuse > 64<<20 {
		t.Errorf("heap in use after GC %d bytes, want under 64 MiB", ms.HeapInuse)
	}
}

// percentile returns the q quantile of sorted, 0 if it is empty.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))].Round(10 * time.Microsecond)
}

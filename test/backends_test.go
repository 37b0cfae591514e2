package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

const (
	roundRobinConfig = testutil.RoundRobinConfig
	pickFirstConfig  = testutil.PickFirstConfig
)

// backends is testutil.Backends, with a grpcguard client.
type backends struct{ *testutil.Backends }

func startBackends(t *testing.T, unary func(i int, ctx context.Context, method, req string) (string, error)) backends {
	return backends{testutil.StartBackends(t, unary)}
}

// client dials every backend through a manual resolver with the load
// balancing serviceConfig, and with grpcguard's DialOptions(opts...) unless
// opts is nil (plain grpc-go). Its metrics are read from the returned
// registry (nil for plain grpc-go).
func (b backends) client(t *testing.T, serviceConfig string, opts ...grpcguard.Option) (*grpc.ClientConn, *testutil.Registry) {
	t.Helper()
	r := manual.NewBuilderWithScheme("grpcguard-backends")
	var addrs []resolver.Address
	for _, p := range b.Proxies {
		addrs = append(addrs, resolver.Address{Addr: p.Addr()})
	}
	r.InitialState(resolver.State{Addresses: addrs})
	dopts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(serviceConfig)}
	var reg *testutil.Registry
	if opts != nil {
		var extra []grpc.DialOption
		extra, reg = guardOptions(t, opts...)
		dopts = append(dopts, extra...)
	}
	cc, err := grpc.NewClient(r.Scheme()+":///backends", dopts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, reg
}

// TestManyBackends runs grpcguard over round_robin across three backends,
// each behind its own proxy:
//
//   - under load from several callers, one backend's connections are closed
//     again and again (FIN and RST in turn): no idempotent call fails and no
//     Echo runs twice, on any backend;
//   - the probe before the pick works per subchannel: right after one
//     backend's idle connection was closed, non-idempotent calls succeed,
//     where plain grpc-go fails some;
//   - where hedges land: with round_robin on another backend (every time),
//     with pick_first on the same one (every time).
func TestManyBackends(t *testing.T) {
	t.Run("KillUnderLoad", testKillUnderLoad)
	t.Run("ProbePerSubchannel", testProbePerSubchannel)
	t.Run("HedgeLanding", testHedgeLanding)
}

func testKillUnderLoad(t *testing.T) {
	const (
		callers = 8
		kills   = 20
	)
	b := startBackends(t, nil)
	cc, reg := b.client(t, roundRobinConfig, grpcguard.WithProbeAfterIdle(5*time.Millisecond))
	b.WarmAll(t, cc, "load")

	var (
		stop                                 atomic.Bool
		wg                                   sync.WaitGroup
		calls, idemFailed, echoFailed, echos atomic.Int64
		echoMu                               sync.Mutex
		echoReqs                             []string
		firstErr                             atomic.Value
	)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 9))
			for i := 0; !stop.Load(); i++ {
				method := []string{testsvc.Get, testsvc.Put, testsvc.Echo}[r.IntN(3)]
				req := fmt.Sprintf("k%d-%d", c, i)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := testsvc.Call(ctx, cc, method, req)
				cancel()
				calls.Add(1)
				if method == testsvc.Echo {
					echos.Add(1)
					echoMu.Lock()
					echoReqs = append(echoReqs, req)
					echoMu.Unlock()
				}
				switch {
				case err == nil:
				case method == testsvc.Echo:
					echoFailed.Add(1)
				default:
					idemFailed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s %s: %w", method, req, err))
				}
				if i%8 == 7 {
					time.Sleep(time.Duration(r.IntN(10)) * time.Millisecond) // the scenario: a quiet caller
				}
			}
		}()
	}
	closed := 0
	for k := range kills {
		time.Sleep(25 * time.Millisecond) // the scenario: load runs between kills
		closed += b.Proxies[k%3].CloseAll(k%2 == 1)
	}
	time.Sleep(25 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	dup := 0
	for _, req := range echoReqs {
		if b.Runs(testsvc.Echo, req) > 1 {
			dup++
		}
	}
	t.Logf("round_robin, %d kills (%d conns closed) under %d callers: %d RPCs, idempotent failed %d, Echo failed %d of %d, Echo run twice %d; retries %v (unprocessed %v), stale conns %d; calls per backend %d/%d/%d",
		kills, closed, callers, calls.Load(), idemFailed.Load(), echoFailed.Load(), echos.Load(), dup,
		metric(t, reg, "grpcguard_retries_total", nil), metric(t, reg, "grpcguard_retries_unprocessed_total", nil), stale(t, reg, ""),
		b.Srvs[0].Calls(), b.Srvs[1].Calls(), b.Srvs[2].Calls())
	if closed < kills/2 {
		t.Errorf("only %d conns closed in %d kills: the scenario did not happen", closed, kills)
	}
	if n := idemFailed.Load(); n > 0 {
		t.Errorf("%d idempotent RPCs failed, want 0; first: %v", n, firstErr.Load())
	}
	if dup > 0 {
		t.Errorf("%d non-idempotent Echo calls ran more than once", dup)
	}
}

func testProbePerSubchannel(t *testing.T) {
	const (
		rounds = 30
		quiet  = 20 * time.Millisecond
	)
	b := startBackends(t, nil)
	var echoReqs []string
	run := func(cc *grpc.ClientConn, tag string) (ok, n int) {
		defer cc.Close() // its reconnects must not disturb the next run
		for round := range rounds {
			b.WarmAll(t, cc, fmt.Sprintf("%s-%d", tag, round))
			time.Sleep(quiet) // the scenario: idle connections
			if b.Proxies[round%3].CloseAll(round%2 == 1) == 0 {
				t.Fatalf("%s round %d: backend %d had no conn to close", tag, round, round%3)
			}
			// round_robin turns to each backend in three picks: one of
			// them is the backend just closed, unless the probe took it out.
			for i := range 3 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				req := fmt.Sprintf("after-close-%s-%d-%d", tag, round, i)
				_, err := testsvc.Call(ctx, cc, testsvc.Echo, req)
				cancel()
				echoReqs = append(echoReqs, req)
				n++
				if err == nil {
					ok++
				}
			}
		}
		return ok, n
	}
	plain, _ := b.client(t, roundRobinConfig)
	plainOK, n := run(plain, "plain")
	guarded, reg := b.client(t, roundRobinConfig, grpcguard.WithProbeAfterIdle(quiet/4))
	guardedOK, _ := run(guarded, "guarded")
	t.Logf("round_robin over 3 backends, Echo right after one backend's idle conn was closed: plain grpc-go %d/%d succeeded, grpcguard %d/%d (stale counted %d)",
		plainOK, n, guardedOK, n, stale(t, reg, ""))
	if guardedOK*100 < n*99 {
		t.Errorf("grpcguard: %d/%d succeeded, want at least 99%%", guardedOK, n)
	}
	for _, req := range echoReqs {
		if n := b.Runs(testsvc.Echo, req); n > 1 {
			t.Errorf("Echo %s ran %d times", req, n)
		}
	}
}

func testHedgeLanding(t *testing.T) {
	const calls = 6
	// The first attempt of every "slow-" request hangs; hedges answer at once.
	b := startBackends(t, func(_ int, ctx context.Context, method, req string) (string, error) {
		if strings.HasPrefix(req, "slow-") && testutil.PreviousAttempts(ctx) == 0 {
			if err := slowFor(ctx, 2*time.Second); err != nil {
				return "", err
			}
		}
		return req, nil
	})
	for _, lb := range []struct{ name, config string }{{"round_robin", roundRobinConfig}, {"pick_first", pickFirstConfig}} {
		cc, _ := b.client(t, lb.config, grpcguard.WithHedgeDelay(20*time.Millisecond), grpcguard.WithMaxAttempts(2))
		if lb.name == "round_robin" {
			b.WarmAll(t, cc, lb.name)
		} else if _, err := testsvc.Call(testutil.CtxTimeout(t, 5*time.Second), cc, testsvc.Get, "warm-pf", grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
		elsewhere := 0
		var where []string
		for i := range calls {
			req := fmt.Sprintf("slow-%s-%d", lb.name, i)
			start := time.Now()
			if _, err := testsvc.Call(testutil.CtxTimeout(t, 5*time.Second), cc, testsvc.Get, req); err != nil {
				t.Fatalf("%s: %s: %v", lb.name, req, err)
			}
			if el := time.Since(start); el > time.Second {
				t.Errorf("%s: %s took %v: the hedge did not answer", lb.name, req, el)
			}
			// The original attempt has been cancelled; its record is there.
			testutil.WaitFor(t, 5*time.Second, "both attempts to reach a server", func() bool { return len(b.Where(req)) == 2 })
			w := b.Where(req)
			slices.SortFunc(w, func(x, y string) int { return strings.Compare(x[3:], y[3:]) })
			if w[0][:2] != w[1][:2] {
				elsewhere++
			}
			where = append(where, strings.Join(w, ","))
		}
		t.Logf("%s: the hedge ran on another backend than the original in %d of %d calls: %v", lb.name, elsewhere, calls, where)
		// round_robin's next pick is the next backend; pick_first has one.
		if want := map[string]int{"round_robin": calls, "pick_first": 0}[lb.name]; elsewhere != want {
			t.Errorf("%s: the hedge ran on another backend in %d of %d calls, want %d", lb.name, elsewhere, calls, want)
		}
	}
}

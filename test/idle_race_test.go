package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"google.golang.org/grpc"
)

// The seed's race: a path that closes a connection after raceIdle of idle,
// and calls whose gaps land right at the close (0.97 to 1.03 of it), nothing
// declared idempotent, default options. A close that lands just after the
// probe, or a reset of the first bytes after idle, kills the call on the wire;
// only the idle horizon, learned from the first deaths, keeps later calls off
// such connections.
const (
	raceIdle  = 100 * time.Millisecond
	raceCalls = 200
)

// raceResult is what one client saw on the race schedule.
type raceResult struct {
	failed         int
	failedLearned  int // failures of calls that started with a horizon learned
	maxRuns        int // the most executions of any one request
	proxyCloses    int64
	retired, stale int
	dials          int
}

// runIdleRace makes raceCalls non-idempotent calls through cc with seeded
// gaps in [0.97, 1.03] x raceIdle; every request is unique, so the server's
// count per request is a count per call. learned, if set, reports whether the
// client knew the horizon when a call started.
func runIdleRace(t *testing.T, name string, cc *grpc.ClientConn, srv *testsvc.Server, p *faultproxy.Proxy, seed uint64, learned func() bool) raceResult {
	rng := rand.New(rand.NewPCG(seed, 7))
	var r raceResult
	if _, err := testsvc.Call(testutil.CtxTimeout(t, 5*time.Second), cc, testsvc.Echo, name+" warm-up", grpc.WaitForReady(true)); err != nil {
		t.Errorf("warm-up: %v", err)
		return r
	}
	for i := range raceCalls {
		gap := time.Duration(float64(raceIdle) * (0.97 + 0.06*rng.Float64()))
		call := time.Now().Add(gap)
		// Whether the client knows the horizon is read before the quiet
		// time, not at its end: a gather of the metrics is a few hundred
		// microseconds of CPU under -race, which at the end would delay
		// the client's own goroutines just when the close and the call
		// meet (TestE2EIdleRace failed 1 run in 5 so). A horizon learned
		// during the quiet time counts from the next call on.
		knew := learned != nil && learned()
		time.Sleep(time.Until(call)) // the scenario: the client is quiet for gap
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := testsvc.Call(ctx, cc, testsvc.Echo, fmt.Sprintf("%s %d", name, i))
		cancel()
		if err != nil {
			r.failed++
			if knew {
				r.failedLearned++
				t.Logf("%s: call %d after %v failed with the horizon known: %v", name, i, gap, err)
			}
		}
	}
	r.maxRuns = srv.MaxRuns(testsvc.Echo)
	r.proxyCloses = p.Stats().Closes()
	return r
}

// TestE2EIdleRace: the seed's race, for a proxy that closes idle connections
// with FIN, with RST, and one that resets the first bytes after idle. Plain
// grpc-go and grpcguard with default options run the same schedule side by
// side, all six clients at once. grpcguard fails at most 3 calls per mode,
// each before it had learned the horizon, and runs no call twice.
func TestE2EIdleRace(t *testing.T) {
	if testing.Short() {
		t.Skip("idle race: skipped in -short mode (20 s of scheduled idle)")
	}
	modes := []faultproxy.Mode{faultproxy.FINAfterIdle, faultproxy.RSTAfterIdle, faultproxy.ResetFirstBytesAfterIdle}
	plain := make([]raceResult, len(modes))
	guarded := make([]raceResult, len(modes))
	var wg sync.WaitGroup
	for mi, mode := range modes {
		seed := uint64(mi + 1)
		cfg := faultproxy.Config{Mode: mode, Idle: raceIdle, Lifetime: time.Minute}
		wg.Add(2)
		go func() {
			defer wg.Done()
			srv := &testsvc.Server{}
			p := testutil.StartProxy(t, testutil.StartServer(t, srv), cfg)
			plain[mi] = runIdleRace(t, "plain "+mode.String(), dial(t, p.Addr()), srv, p, seed, nil)
		}()
		go func() {
			defer wg.Done()
			srv := &testsvc.Server{}
			p := testutil.StartProxy(t, testutil.StartServer(t, srv), cfg)
			cc, reg := guardClient(t, p.Addr())
			// The client knows the horizon when it publishes one: retiring
			// starts with the gauge above 0.
			guarded[mi] = runIdleRace(t, "grpcguard "+mode.String(), cc, srv, p, seed, func() bool {
				return metric(t, reg, "grpcguard_idle_horizon_seconds", nil) > 0
			})
			guarded[mi].retired = int(metric(t, reg, "grpcguard_connections_retired_total", map[string]string{"reason": "learned"}))
			guarded[mi].stale = stale(t, reg, "")
			guarded[mi].dials = int(metric(t, reg, "grpcguard_dials_total", map[string]string{"result": "ok"}))
		}()
	}
	wg.Wait()
	for mi, mode := range modes {
		pl, g := plain[mi], guarded[mi]
		t.Logf("%v, %d non-idempotent calls at 0.97-1.03 x %v idle: plain grpc-go failed %d (proxy closed %d); grpcguard failed %d (%d after learning), retired %d conns, %d stale, %.2f dials per call; most runs of one call: plain %d, grpcguard %d",
			mode, raceCalls, raceIdle, pl.failed, pl.proxyCloses, g.failed, g.failedLearned, g.retired, g.stale, float64(g.dials)/raceCalls, pl.maxRuns, g.maxRuns)
		if g.failed > 3 || g.failedLearned > 0 {
			t.Errorf("%v: grpcguard failed %d calls, %d of them after the horizon was learned; want at most 3, none after learning", mode, g.failed, g.failedLearned)
		}
		if g.maxRuns > 1 {
			t.Errorf("%v: grpcguard ran a call %d times", mode, g.maxRuns)
		}
		if pl.failed == 0 {
			t.Errorf("%v: plain grpc-go failed nothing: the scenario did not happen", mode)
		}
	}
}

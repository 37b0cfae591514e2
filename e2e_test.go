package grpcguard

import (
	"context"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// idleGaps straddle a proxy idle time of 60ms: calls back to back, just
// under it, and well over it.
var idleGaps = []time.Duration{0, 20 * time.Millisecond, 90 * time.Millisecond, 0, 150 * time.Millisecond, 5 * time.Millisecond, 90 * time.Millisecond}

const proxyIdle = 60 * time.Millisecond

// staleConns reads grpcguard_stale_connections_total from reg, as a user's
// dashboard does: for one reason, or for all with reason "".
func staleConns(t *testing.T, reg *testutil.Registry, reason string) int64 {
	t.Helper()
	var labels map[string]string
	if reason != "" {
		labels = map[string]string{"reason": reason}
	}
	return int64(testutil.MetricValue(t, reg, "grpcguard_stale_connections_total", labels))
}

// TestE2EIdleCloses: behind a proxy that closes idle connections, every RPC
// succeeds and every close the proxy made is counted.
func TestE2EIdleCloses(t *testing.T) {
	for _, mode := range []faultproxy.Mode{faultproxy.FINAfterIdle, faultproxy.RSTAfterIdle, faultproxy.HalfCloseAfterIdle} {
		t.Run(mode.String(), func(t *testing.T) {
			p := startProxy(t, startServer(t, &testsvc.Server{}), faultproxy.Config{Mode: mode, Idle: proxyIdle})
			m := NewMetrics()
			reg := testutil.NewRegistry(t, m)
			cc, _ := guardedClient(t, p.Addr(), WithMetrics(m), WithProbeAfterIdle(10*time.Millisecond))
			for round := range 2 {
				for i, gap := range idleGaps {
					time.Sleep(gap) // the scenario: the client is quiet this long
					if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x"); err != nil {
						t.Fatalf("round %d call %d after %v idle: %v", round, i, gap, err)
					}
				}
			}
			cc.Close()
			st := p.Stats()
			if st.Closes() == 0 {
				t.Fatal("the proxy closed nothing: the scenario did not happen")
			}
			waitFor(t, 5*time.Second, "every proxy close to be counted", func() bool { return staleConns(t, reg, "") >= st.Closes() })
			if got := staleConns(t, reg, ""); got != st.Closes() {
				t.Fatalf("stale_connections_total = %d, proxy closed %d", got, st.Closes())
			}
			want := "peer_closed"
			if mode == faultproxy.RSTAfterIdle {
				want = "reset"
			}
			if got := staleConns(t, reg, want); got != st.Closes() {
				t.Fatalf("stale_connections_total{reason=%q} = %d, want %d", want, got, st.Closes())
			}
			t.Logf("%v: %d RPCs, proxy closes %+v, all counted as %v", mode, 2*len(idleGaps), st, want)
		})
	}
}

// TestE2EResetFirstBytesWithoutRetry: a middlebox that resets the first
// bytes after idle accepts the write, so no probe can see it coming: with
// the Dialer alone (no retry), each reset fails the non-idempotent call it
// hit, and nothing else fails. The reset connection is counted as stale. The
// retry interceptor is what handles these (TestRetryResetFirstBytesAfterIdle).
func TestE2EResetFirstBytesWithoutRetry(t *testing.T) {
	p := startProxy(t, startServer(t, &testsvc.Server{}), faultproxy.Config{Mode: faultproxy.ResetFirstBytesAfterIdle, Idle: proxyIdle})
	m := NewMetrics()
	reg := testutil.NewRegistry(t, m)
	cc, _ := guardedClient(t, p.Addr(), WithMetrics(m), WithProbeAfterIdle(10*time.Millisecond))
	failed := 0
	for _, gap := range idleGaps {
		time.Sleep(gap) // the scenario: the client is quiet this long
		if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x"); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Errorf("a reset failed the call with %v, want Unavailable", err)
			}
			failed++
		}
	}
	st := p.Stats()
	t.Logf("reset-first-bytes-after-idle, dialer only: %d of %d RPCs failed; proxy %+v; stale counted %d",
		failed, len(idleGaps), st, staleConns(t, reg, ""))
	if st.RSTs == 0 {
		t.Fatal("the proxy reset nothing: the scenario did not happen")
	}
	if int64(failed) != st.RSTs {
		t.Errorf("%d calls failed for %d resets: want one failure per reset, no other", failed, st.RSTs)
	}
	waitFor(t, 5*time.Second, "every reset conn to be counted", func() bool { return staleConns(t, reg, "") >= st.RSTs })
}

// TestE2EWindowAfterPeerClose: RPCs issued right after the peer closed the
// connection, before grpc's reader noticed. Plain grpc-go fails most of them;
// the probe before the pick turns each into a redial.
func TestE2EWindowAfterPeerClose(t *testing.T) {
	const rpcs = 150
	for _, rst := range []bool{false, true} {
		name := "FIN"
		if rst {
			name = "RST"
		}
		t.Run(name, func(t *testing.T) {
			srv := &testsvc.Server{}
			target := startServer(t, srv)

			// Each connection is quiet for quiet before the proxy closes it, as
			// a load balancer closes idle connections; grpc's own background
			// reads (BDP pings) make much shorter quiet times unrealistic.
			const quiet = 20 * time.Millisecond
			plainProxy := startProxy(t, target, faultproxy.Config{})
			plain := newClient(t, plainProxy.Addr())
			plainOK := windowRun(t, plain, plainProxy, rst, rpcs, quiet)

			guardedProxy := startProxy(t, target, faultproxy.Config{})
			m := NewMetrics()
			reg := testutil.NewRegistry(t, m)
			guarded, _ := guardedClient(t, guardedProxy.Addr(), WithMetrics(m), WithProbeAfterIdle(quiet/4))
			guardedOK := windowRun(t, guarded, guardedProxy, rst, rpcs, quiet)

			t.Logf("%s: RPCs issued right after the peer closed the conn that succeeded: plain grpc-go %d/%d, grpcguard %d/%d (stale counted %d)",
				name, plainOK, rpcs, guardedOK, rpcs, staleConns(t, reg, ""))
			if guardedOK*100 < rpcs*99 {
				t.Fatalf("grpcguard: %d/%d succeeded, want at least 99%%", guardedOK, rpcs)
			}
			if plainOK == rpcs {
				t.Fatalf("plain grpc-go: %d/%d succeeded: the window after the close did not happen", plainOK, rpcs)
			}
		})
	}
}

// windowRun makes rpcs rounds of: a warm-up call, quiet time, the
// proxy closing every conn, and at once a non-idempotent call. It returns how
// many of those calls succeeded.
func windowRun(t *testing.T, cc *grpc.ClientConn, p *faultproxy.Proxy, rst bool, rpcs int, quiet time.Duration) int {
	ok := 0
	for i := range rpcs {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "warm", grpc.WaitForReady(true)); err != nil {
			cancel()
			t.Fatalf("warm-up %d: %v", i, err)
		}
		time.Sleep(quiet) // the scenario: an idle connection
		if p.CloseAll(rst) == 0 {
			cancel()
			t.Fatalf("round %d: the proxy had no conn to close", i)
		}
		if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "after-close"); err == nil {
			ok++
		}
		cancel()
	}
	return ok
}

package grpcguard

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// These tests prove WithAvoidTriedBackends over three real backends: resends
// and hedges of one call land on a backend no earlier attempt of the call
// used. The scenario makes round_robin alone fail at it on purpose: before
// each resend or hedge, two other calls take the next two picks, so that
// round_robin's turn comes back to the backend the call just used (as it
// does by chance under concurrent load).

// scenarioKey marks the calls of the scenario, not the filler calls.
type scenarioKey struct{}

// avoidClient dials the backends through a manual resolver with
// DialOptions(opts...), then the dial options after (a user's own, given
// after grpcguard's).
func avoidClient(t *testing.T, b *testutil.Backends, opts []Option, after ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	var addrs []string
	for _, p := range b.Proxies {
		addrs = append(addrs, p.Addr())
	}
	return avoidClientOf(t, addrs, opts, after...)
}

// avoidClientOf is avoidClient for any addresses.
func avoidClientOf(t *testing.T, targets []string, opts []Option, after ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	r := manual.NewBuilderWithScheme("grpcguard-avoid")
	var addrs []resolver.Address
	for _, a := range targets {
		addrs = append(addrs, resolver.Address{Addr: a})
	}
	r.InitialState(resolver.State{Addresses: addrs})
	dopts, err := DialOptions(opts...)
	if err != nil {
		t.Fatal(err)
	}
	dopts = append(append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(r)}, dopts...), after...)
	cc, err := grpc.NewClient(r.Scheme()+":///backends", dopts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// fillers returns Hooks that, before each resend (and, with hedges, each
// hedge) of a scenario call, make two other calls on *cc.
func fillers(cc **grpc.ClientConn) Hooks {
	var n atomic.Int64
	return Hooks{OnAttempt: func(ctx context.Context, e AttemptEvent) {
		if e.Attempt == 1 || ctx.Value(scenarioKey{}) == nil {
			return
		}
		for range 2 {
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			testsvc.Call(fctx, *cc, testsvc.Put, fmt.Sprintf("filler-%d", n.Add(1)))
			cancel()
		}
	}}
}

// backendsOf returns the backends that req's attempts ran on, in attempt
// order, from records "b<backend>/a<previous attempts>".
func backendsOf(where []string) []string {
	slices.SortFunc(where, func(x, y string) int { return strings.Compare(x[3:], y[3:]) })
	var out []string
	for _, w := range where {
		out = append(out, w[:2])
	}
	return out
}

func distinct(backends []string) bool {
	s := slices.Clone(backends)
	slices.Sort(s)
	return len(slices.Compact(s)) == len(backends)
}

// Every attempt of a "retry-" request fails with Unavailable but the third;
// the original of a "hedge-" request straggles, its hedge answers.
func avoidBackends(t *testing.T) *testutil.Backends {
	return testutil.StartBackends(t, func(_ int, ctx context.Context, _, req string) (string, error) {
		switch {
		case strings.HasPrefix(req, "retry-") && previousAttempts(ctx) < 2:
			return "", status.Error(codes.Unavailable, "try another backend")
		case strings.HasPrefix(req, "hedge-") && previousAttempts(ctx) == 0:
			if err := sleep(ctx, 5*time.Second); err != nil {
				return "", err
			}
		}
		return req, nil
	})
}

// runScenario makes calls scenario calls of kind ("retry" or "hedge") and
// returns, per call, the backends its attempts ran on.
func runScenario(t *testing.T, b *testutil.Backends, cc *grpc.ClientConn, kind, tag string, calls int) [][]string {
	t.Helper()
	want := 3
	if kind == "hedge" {
		want = 2
	}
	var out [][]string
	for i := range calls {
		req := fmt.Sprintf("%s-%s-%d", kind, tag, i)
		ctx := context.WithValue(ctxTimeout(t, 10*time.Second), scenarioKey{}, true)
		if _, err := testsvc.Call(ctx, cc, testsvc.Get, req); err != nil {
			t.Fatalf("%s: %v", req, err)
		}
		// A hedged call returns once its straggler is cancelled; its
		// record is there by then, or soon.
		waitFor(t, 5*time.Second, req+"'s attempts to reach a server", func() bool { return len(b.Where(req)) == want })
		out = append(out, backendsOf(b.Where(req)))
	}
	return out
}

func TestAvoidTriedBackends(t *testing.T) {
	const calls = 5
	b := avoidBackends(t)
	common := []Option{WithMaxAttempts(3), WithBackoff(time.Millisecond, time.Millisecond, 1)}
	kinds := []struct {
		kind string
		opts []Option
	}{
		{"retry", common},
		{"hedge", []Option{WithMaxAttempts(2), WithHedgeDelay(20 * time.Millisecond)}},
	}
	for _, k := range kinds {
		t.Run(k.kind, func(t *testing.T) {
			var cc *grpc.ClientConn
			cc = avoidClient(t, b, append(slices.Clone(k.opts), WithAvoidTriedBackends(), WithHooks(fillers(&cc))))
			b.WarmAll(t, cc, k.kind)
			for _, w := range runScenario(t, b, cc, k.kind, "avoid", calls) {
				if !distinct(w) {
					t.Errorf("a call's attempts ran on %v: a %s went to a backend the call had used", w, k.kind)
				}
			}
		})
	}

	// The baseline: round_robin alone sends resends and hedges wherever its
	// turn is, here the backend the call just used.
	t.Run("RoundRobinAlone", func(t *testing.T) {
		same := 0
		var all [][]string
		for _, k := range kinds {
			var cc *grpc.ClientConn
			cc = avoidClient(t, b, append(slices.Clone(k.opts), WithHooks(fillers(&cc))), grpc.WithDefaultServiceConfig(testutil.RoundRobinConfig))
			b.WarmAll(t, cc, "baseline-"+k.kind)
			w := runScenario(t, b, cc, k.kind, "baseline", calls)
			for _, c := range w {
				if !distinct(c) {
					same++
				}
			}
			all = append(all, w...)
		}
		t.Logf("round_robin alone: the attempts of each call ran on %v", all)
		if same == 0 {
			t.Errorf("round_robin alone never repeated a backend in %d calls: the scenario did not happen", 2*calls)
		}
	})

	// With pick_first there is one subchannel, nothing to choose: every
	// attempt goes to the same backend, and the call still succeeds. A
	// user's own default service config, given after DialOptions, wins.
	t.Run("PickFirst", func(t *testing.T) {
		for _, sc := range []string{
			`{"loadBalancingConfig": [{"` + AvoidTriedBackendsPolicy + `": {"childPolicy": [{"pick_first": {}}]}}]}`,
			testutil.PickFirstConfig,
		} {
			cc := avoidClient(t, b, append(common, WithAvoidTriedBackends()), grpc.WithDefaultServiceConfig(sc))
			if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "warm-pf", grpc.WaitForReady(true)); err != nil {
				t.Fatal(err)
			}
			for _, w := range runScenario(t, b, cc, "retry", "pf"+fmt.Sprint(len(sc)), 2) {
				if w[0] != w[1] || w[1] != w[2] {
					t.Errorf("%s: attempts ran on %v, want one backend", sc, w)
				}
			}
		}
	})
}

// With client-side health checking, a replacement pick goes only where the
// child policy would go: never to a backend whose health service says
// NOT_SERVING, though its connection is READY.
func TestAvoidTriedBackendsHealth(t *testing.T) {
	const calls = 6
	var (
		mu     sync.Mutex
		landed = map[string][]int{}
		addrs  []string
	)
	for i := range 3 {
		srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
			mu.Lock()
			landed[req] = append(landed[req], i)
			mu.Unlock()
			if strings.HasPrefix(req, "retry-") && previousAttempts(ctx) < 2 {
				return "", status.Error(codes.Unavailable, "try another backend")
			}
			return req, nil
		}}
		gs := grpc.NewServer()
		srv.Register(gs)
		hs := health.NewServer()
		if i == 2 {
			hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
		}
		healthpb.RegisterHealthServer(gs, hs)
		addrs = append(addrs, serveLoopback(t, gs))
	}
	sc := `{"loadBalancingConfig": [{"` + AvoidTriedBackendsPolicy + `": {}}], "healthCheckConfig": {"serviceName": ""}}`
	var cc *grpc.ClientConn
	cc = avoidClientOf(t, addrs, []Option{WithMaxAttempts(3), WithBackoff(time.Millisecond, time.Millisecond, 1),
		WithAvoidTriedBackends(), WithHooks(fillers(&cc))}, grpc.WithDefaultServiceConfig(sc))
	// Until both healthy backends have served: both are then ready.
	for i := 0; ; i++ {
		req := fmt.Sprintf("warm-%d", i)
		if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, req, grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		seen := [3]bool{}
		for r, w := range landed {
			if strings.HasPrefix(r, "warm-") {
				for _, b := range w {
					seen[b] = true
				}
			}
		}
		mu.Unlock()
		if seen[2] {
			t.Fatal("a call ran on the NOT_SERVING backend")
		}
		if seen[0] && seen[1] {
			break
		}
		if i == 100 {
			t.Fatal("100 calls did not reach both healthy backends")
		}
	}
	for i := range calls {
		req := fmt.Sprintf("retry-health-%d", i)
		ctx := context.WithValue(ctxTimeout(t, 10*time.Second), scenarioKey{}, true)
		if _, err := testsvc.Call(ctx, cc, testsvc.Get, req, grpc.WaitForReady(true)); err != nil {
			t.Fatalf("%s: %v", req, err)
		}
		mu.Lock()
		w := slices.Clone(landed[req])
		mu.Unlock()
		if slices.Contains(w, 2) || len(w) != 3 || w[0] == w[1] {
			t.Errorf("%s: attempts ran on backends %v; want 3 attempts, the first two on 0 and 1, none on 2 (NOT_SERVING)", req, w)
		}
	}
}

// A stream's retries, too, go to backends the call has not tried: every
// attempt of a Watch fails before its first message but the third.
func TestAvoidTriedBackendsStream(t *testing.T) {
	const calls = 5
	var (
		mu     sync.Mutex
		landed = map[string][]string{}
		addrs  []string
	)
	for i := range 3 {
		srv := &testsvc.Server{Watch: func(ctx context.Context, req string, send func(string) error) error {
			mu.Lock()
			landed[req] = append(landed[req], fmt.Sprintf("b%d/a%d", i, previousAttempts(ctx)))
			mu.Unlock()
			if strings.HasPrefix(req, "watch-") && previousAttempts(ctx) < 2 {
				return status.Error(codes.Unavailable, "try another backend")
			}
			return send(req)
		}}
		addrs = append(addrs, startServer(t, srv))
	}
	var cc *grpc.ClientConn
	cc = avoidClientOf(t, addrs, []Option{WithMaxAttempts(3), WithBackoff(time.Millisecond, time.Millisecond, 1),
		WithAvoidTriedBackends(), WithHooks(fillers(&cc))})
	watch := func(ctx context.Context, req string) (string, error) {
		s, err := cc.NewStream(ctx, testsvc.WatchDesc, testsvc.Watch, grpc.WaitForReady(true))
		if err != nil {
			return "", err
		}
		if err := s.SendMsg(wrapperspb.String(req)); err != nil {
			return "", err
		}
		if err := s.CloseSend(); err != nil {
			return "", err
		}
		out := new(wrapperspb.StringValue)
		err = s.RecvMsg(out)
		return out.GetValue(), err
	}
	// Until every backend has served a Watch: all are then ready.
	for i := 0; ; i++ {
		if _, err := watch(ctxTimeout(t, 5*time.Second), fmt.Sprintf("warm-%d", i)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		seen := map[string]bool{}
		for r, w := range landed {
			for _, x := range w {
				seen[x[:2]] = seen[x[:2]] || strings.HasPrefix(r, "warm-")
			}
		}
		mu.Unlock()
		if len(seen) == 3 {
			break
		}
		if i == 100 {
			t.Fatal("100 streams did not reach every backend")
		}
	}
	for i := range calls {
		req := fmt.Sprintf("watch-%d", i)
		ctx := context.WithValue(ctxTimeout(t, 10*time.Second), scenarioKey{}, true)
		if got, err := watch(ctx, req); err != nil || got != req {
			t.Fatalf("%s: %q, %v", req, got, err)
		}
		mu.Lock()
		w := backendsOf(slices.Clone(landed[req]))
		mu.Unlock()
		if len(w) != 3 || !distinct(w) {
			t.Errorf("%s: attempts ran on %v, want three backends", req, w)
		}
	}
}

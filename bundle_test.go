package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// bundleClient dials target with DialOptions(opts...).
func bundleClient(t *testing.T, target string, opts ...Option) *grpc.ClientConn {
	t.Helper()
	dopts, err := DialOptions(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, target, dopts...)
}

func TestDialOptionsRejectsInvalidOptions(t *testing.T) {
	_, err := DialOptions(WithMaxAttempts(0), WithProbeAfterIdle(-time.Second), WithServiceConfig(`{"methodConfig":[{"name":[{}],"retryPolicy":{"maxAttempts":1}}]}`))
	if !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("DialOptions error = %v, want ErrInvalidOption", err)
	}
	for _, want := range []string{"WithMaxAttempts(0)", "WithProbeAfterIdle(-1s)", "maxAttempts"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

// TestDialOptionsResetFirstBytes: a middlebox resets the first bytes after
// idle. Idempotent calls never fail, non-idempotent ones never run twice.
func TestDialOptionsResetFirstBytes(t *testing.T) {
	srv := &testsvc.Server{}
	p := startProxy(t, startServer(t, srv), faultproxy.Config{Mode: faultproxy.ResetFirstBytesAfterIdle, Idle: proxyIdle})
	m := NewMetrics()
	cc := bundleClient(t, p.Addr(), WithMetrics(m), WithProbeAfterIdle(10*time.Millisecond))
	getFailed, echoFailed := 0, 0
	for round := range 2 {
		for i, gap := range idleGaps {
			time.Sleep(gap) // the scenario: the client is quiet this long
			ctx := ctxTimeout(t, 5*time.Second)
			if _, err := testsvc.Call(ctx, cc, testsvc.Get, "g"); err != nil {
				getFailed++
				t.Errorf("round %d Get %d after %v idle: %v", round, i, gap, err)
			}
			time.Sleep(gap)
			req := "e" + string(rune('a'+round*len(idleGaps)+i))
			if _, err := testsvc.Call(ctx, cc, testsvc.Echo, req); err != nil {
				echoFailed++
			}
		}
	}
	if n := srv.MaxRuns(testsvc.Echo); n > 1 {
		t.Fatalf("a non-idempotent Echo ran %d times", n)
	}
	t.Logf("reset-first-bytes via DialOptions: Get failed %d/%d, Echo failed %d/%d (never ran twice); proxy %+v",
		getFailed, 2*len(idleGaps), echoFailed, 2*len(idleGaps), p.Stats())
}

// TestDialOptionsServiceConfigHedging: a hedgingPolicy in the service config
// hedges its method, whatever its descriptor says; others are untouched.
func TestDialOptionsServiceConfigHedging(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req == "slow-first" && previousAttempts(ctx) == 0 {
			sleep(ctx, 2*time.Second)
		}
		return req, nil
	}}
	m := NewMetrics()
	cc := bundleClient(t, startServer(t, srv), WithMetrics(m), WithServiceConfig(`{"methodConfig":[{
		"name":[{"service":"grpcguard.testing.Echo","method":"Echo"}],
		"hedgingPolicy":{"maxAttempts":2,"hedgingDelay":"0.03s"}}]}`))
	start := time.Now()
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "slow-first"); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Fatalf("call took %v: the hedge did not win", el)
	}
	if n := srv.Runs(testsvc.Echo, "slow-first"); n != 2 {
		t.Fatalf("Echo ran %d times, want 2 (original + hedge)", n)
	}
	// Get has no hedging policy: one attempt.
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "once"); err != nil {
		t.Fatal(err)
	}
	if n := srv.Runs(testsvc.Get, "once"); n != 1 {
		t.Fatalf("Get ran %d times, want 1", n)
	}
}

// TestDialOptionsNoLeakAfterClose: under every fault mode, a client made
// with DialOptions leaves no goroutine behind once closed.
func TestDialOptionsNoLeakAfterClose(t *testing.T) {
	for _, mode := range []faultproxy.Mode{faultproxy.Pass, faultproxy.FINAfterIdle, faultproxy.RSTAfterIdle,
		faultproxy.HalfCloseAfterIdle, faultproxy.ResetFirstBytesAfterIdle, faultproxy.Blackhole} {
		t.Run(mode.String(), func(t *testing.T) {
			before := goleak.IgnoreCurrent()
			srv := &testsvc.Server{}
			addr, stopServer, err := testsvc.Serve(srv)
			if err != nil {
				t.Fatal(err)
			}
			p, err := faultproxy.Start(addr, faultproxy.Config{Mode: mode, Idle: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			dopts, err := DialOptions(WithSweepInterval(5*time.Millisecond), WithAdaptiveHedgeDelay(0.9, time.Millisecond, 50*time.Millisecond),
				WithPerAttemptTimeout(200*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			cc, err := grpc.NewClient("passthrough:///"+p.Addr(), append(dopts, grpc.WithTransportCredentials(insecureCreds()))...)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 4 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				testsvc.Call(ctx, cc, testsvc.Get, "x")
				if i%2 == 1 {
					time.Sleep(30 * time.Millisecond) // past the proxy's idle time
				}
				cancel()
			}
			cc.Close()
			p.Close()
			stopServer()
			goleak.VerifyNone(t, before)
		})
	}
}

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }

// TestDialOptionsHedgeAndRetryDoNotMultiply: with hedging over retry, a
// method that always fails sends maxAttempts attempts in all, not
// maxAttempts squared: hedging owns the attempts and retry passes them on.
func TestDialOptionsHedgeAndRetryDoNotMultiply(t *testing.T) {
	srv := &testsvc.Server{Unary: func(_ context.Context, _, req string) (string, error) {
		if req == "ok" {
			return req, nil
		}
		return "", status.Error(codes.Unavailable, "always")
	}}
	cc := bundleClient(t, startServer(t, srv), WithHedgeDelay(time.Hour), WithMaxAttempts(3))
	_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "x")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call = %v, want Unavailable", err)
	}
	if n := srv.Runs(testsvc.Get, "x"); n != 3 {
		t.Fatalf("server saw %d attempts, want 3 (hedge -> retry -> dialer must not multiply)", n)
	}
	// A non-idempotent method is neither hedged nor retried after it ran.
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "y"); status.Code(err) != codes.Unavailable {
		t.Fatalf("Echo = %v", err)
	}
	if n := srv.Runs(testsvc.Echo, "y"); n != 1 {
		t.Fatalf("Echo ran %d times, want 1", n)
	}
}

// slowFirst makes the original attempt of requests starting with "slow"
// take d (or until cancelled); every other attempt answers at once.
func slowFirst(d time.Duration) func(context.Context, string, string) (string, error) {
	return func(ctx context.Context, _, req string) (string, error) {
		if strings.HasPrefix(req, "slow") && previousAttempts(ctx) == 0 {
			if err := sleep(ctx, d); err != nil {
				return "", err
			}
		}
		return req, nil
	}
}

// TestDialOptionsFreshClientHedges: the first call of a new client is
// hedged with the default budget, whether hedging comes from an option or
// from a service config hedgingPolicy.
func TestDialOptionsFreshClientHedges(t *testing.T) {
	for name, opts := range map[string][]Option{
		"WithHedgeDelay": {WithHedgeDelay(30 * time.Millisecond), WithMaxAttempts(2)},
		"hedgingPolicy": {WithServiceConfig(`{"methodConfig":[{"name":[{"service":"grpcguard.testing.Echo","method":"Get"}],
			"hedgingPolicy":{"maxAttempts":2,"hedgingDelay":"0.03s"}}]}`)},
	} {
		t.Run(name, func(t *testing.T) {
			srv := &testsvc.Server{Unary: slowFirst(2 * time.Second)}
			m := NewMetrics()
			cc := bundleClient(t, startServer(t, srv), append(opts, WithMetrics(m))...)
			start := time.Now()
			if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "slow"); err != nil {
				t.Fatal(err)
			}
			if el := time.Since(start); el > 500*time.Millisecond {
				t.Fatalf("the first call took %v: it was not hedged", el)
			}
			if h, w, th := hedgeCount(m, testsvc.Get); h != 1 || w != 1 || th != 0 {
				t.Errorf("hedges %d, wins %d, throttled %d; want 1, 1, 0", h, w, th)
			}
		})
	}
}

// TestDialOptionsHedgedDeadlines: a hedged method keeps the service config
// timeout of its method and the per-attempt timeout.
func TestDialOptionsHedgedDeadlines(t *testing.T) {
	t.Run("service config timeout", func(t *testing.T) {
		srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
			if err := sleep(ctx, 1500*time.Millisecond); err != nil {
				return "", err
			}
			return req, nil
		}}
		cc := bundleClient(t, startServer(t, srv), WithHedgeDelay(time.Hour),
			WithServiceConfig(`{"methodConfig":[{"name":[{"service":"grpcguard.testing.Echo"}],"timeout":"0.1s"}]}`))
		start := time.Now()
		_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "x")
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("got %v after %v, want DeadlineExceeded", err, time.Since(start))
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("the call ended after %v, want about 0.1s", el)
		}
	})
	t.Run("per-attempt timeout", func(t *testing.T) {
		srv := &testsvc.Server{Unary: slowFirst(2 * time.Second)}
		cc := bundleClient(t, startServer(t, srv), WithHedgeDelay(time.Hour), WithPerAttemptTimeout(100*time.Millisecond))
		start := time.Now()
		if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "slow"); err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("the call took %v, want about 0.1s: the attempt's timeout starts the next one", el)
		}
		if n := srv.Runs(testsvc.Get, "slow"); n != 2 {
			t.Errorf("%d attempts, want 2", n)
		}
	})
}

// TestDialOptionsRefusedHedgeStillRetries: the budget refuses the hedge, and
// the original attempt then fails with Unavailable: the call is resent, as
// a retry, because the budget allows a retry.
func TestDialOptionsRefusedHedgeStillRetries(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
		if previousAttempts(ctx) == 0 {
			sleep(ctx, 50*time.Millisecond) // the scenario: slower than the delay
			return "", status.Error(codes.Unavailable, "then down")
		}
		return req, nil
	}}
	m := NewMetrics()
	cc := bundleClient(t, startServer(t, srv), WithMetrics(m), WithHedgeDelay(10*time.Millisecond), WithHedgeBudget(0))
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "x"); err != nil {
		t.Fatalf("got %v, want the resend's success", err)
	}
	if h, _, th := hedgeCount(m, testsvc.Get); th != 1 || h != 1 {
		t.Errorf("hedges %d (the resend), throttled %d; want 1, 1", h, th)
	}
	if n := retriedCount(m, testsvc.Get, codes.Unavailable); n != 1 {
		t.Errorf("retries %d, want 1", n)
	}
}

// TestDialOptionsBudgetBoundsRetriesAndHedges: against a server that fails
// everything, retries, hedges and hedged resends of one client together stay
// within the documented bound: ratio*calls (no floor here) for the ratio
// budget, maxTokens/2 plus the attempts of one call for A6 throttling.
func TestDialOptionsBudgetBoundsRetriesAndHedges(t *testing.T) {
	const calls = 50 // of each: hedged Get, retried Put
	for _, tc := range []struct {
		name  string
		opt   Option
		bound int
	}{
		{"ratio budget", WithRetryBudget(0.2, 0, DefaultBudgetWindow), int(0.2 * 2 * calls)},
		{"A6 throttling", WithRetryThrottling(10, 0.1), 10/2 + DefaultMaxAttempts - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
				if strings.HasPrefix(req, "slow") {
					sleep(ctx, 15*time.Millisecond) // slower than the hedge delay: hedged on time
				}
				return "", status.Error(codes.Unavailable, "always")
			}}
			cc := bundleClient(t, startServer(t, srv), tc.opt, WithHedgeDelay(5*time.Millisecond), fastBackoff)
			for i := range calls {
				get := fmt.Sprint("fast", i) // resent after its failure
				if i%2 == 1 {
					get = fmt.Sprint("slow", i)
				}
				testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, get)
				testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Put, fmt.Sprint("p", i), WithHedgingDisabled())
			}
			extra := srv.Calls() - 2*calls
			t.Logf("%s: %d calls, %d extra attempts (bound %d)", tc.name, 2*calls, extra, tc.bound)
			if extra > tc.bound {
				t.Errorf("%d extra attempts, want at most %d", extra, tc.bound)
			}
			if extra == 0 {
				t.Error("no extra attempt at all: the scenario did not happen")
			}
		})
	}
}

// TestDialOptionsMarkerStaysInItsAttempt: an interceptor beneath
// grpcguard's (as credentials or an auth interceptor would) makes an RPC of
// its own with the attempt's context. That nested RPC, on another grpcguard
// client, gets its own retries: the marker that tells grpcguard's
// interceptors an attempt is owned travels with the attempt's options, never
// in its context.
func TestDialOptionsMarkerStaysInItsAttempt(t *testing.T) {
	for name, opts := range map[string][]Option{"retried": nil, "hedged": {WithHedgeDelay(time.Hour)}} {
		t.Run(name, func(t *testing.T) {
			inner := &testsvc.Server{Unary: failFirst(1, codes.Unavailable)} // the nested call needs a retry
			innerCC := bundleClient(t, startServer(t, inner))
			var nestedErr error
			nested := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				if !ownedAttempt(opts) {
					t.Error("an attempt without the owner marker")
				}
				_, nestedErr = testsvc.Call(ctx, innerCC, testsvc.Get, "token")
				return invoker(ctx, method, req, reply, cc, opts...)
			}
			dopts, err := DialOptions(opts...)
			if err != nil {
				t.Fatal(err)
			}
			cc := newClient(t, startServer(t, &testsvc.Server{}), append(dopts, grpc.WithChainUnaryInterceptor(nested))...)
			if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "outer"); err != nil {
				t.Fatal(err)
			}
			if nestedErr != nil || inner.Runs(testsvc.Get, "token") != 2 {
				t.Errorf("nested call: %v after %d attempts, want success after 2", nestedErr, inner.Runs(testsvc.Get, "token"))
			}
		})
	}
}

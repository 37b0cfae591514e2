package grpcguard

import (
	"context"
	"errors"
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

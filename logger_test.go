package grpcguard

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/dialroute"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The criterion: a non-idempotent call that ran and failed is not
// resent; the caller's status says why, the logger got exactly one warning,
// and a user's hook beside the logger was called once.
func TestLoggerWarnsNotResentMayHaveRun(t *testing.T) {
	srv := &testsvc.Server{Unary: func(context.Context, string, string) (string, error) {
		return "", status.Error(codes.Unavailable, "ran, then failed")
	}}
	logs := &testsvc.Logs{Level: slog.LevelInfo}
	var hooked atomic.Int32
	dopts, err := DialOptions(WithLogger(slog.New(logs)), WithHooks(Hooks{
		OnNotResent: func(_ context.Context, e NotResentEvent) {
			if e.Reason == ReasonMayHaveRun {
				hooked.Add(1)
			}
		},
	}))
	if err != nil {
		t.Fatal(err)
	}
	cc := newClient(t, startServer(t, srv), dopts...)
	_, err = testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "pay")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call: %v, want the server's Unavailable", err)
	}
	if why, ok := NotResentReason(err); !ok || why != ReasonMayHaveRun {
		t.Errorf("NotResentReason = %q %v, want %s", why, ok, ReasonMayHaveRun)
	}
	if n := srv.Runs(testsvc.Echo, "pay"); n != 1 {
		t.Errorf("ran %d times, want 1", n)
	}
	if n := hooked.Load(); n != 1 {
		t.Errorf("hook called %d times, want 1", n)
	}
	warns := logs.Records(slog.LevelWarn)
	if len(warns) != 1 {
		t.Fatalf("%d warnings, want 1: %v", len(warns), warns)
	}
	r := warns[0]
	if r.Level != slog.LevelWarn || !strings.Contains(r.Message, "may have run") ||
		testsvc.Attr(r, "method") != testsvc.Echo || testsvc.Attr(r, "reason") != ReasonMayHaveRun ||
		testsvc.Attr(r, "attempt") != "1" || testsvc.Attr(r, "peer") == "" ||
		!strings.Contains(testsvc.Attr(r, "error"), "ran, then failed") {
		t.Fatalf("warning %q %v: want the method, the server, the attempt, the error and the reason", r.Message, r)
	}
}

// A proxy that refuses the tunnel is an operator's problem: one warning
// naming the proxy and its answer, never its credentials. A direct dial that
// fails is grpc's to report: debug only.
func TestLoggerWarnsProxyRefusal(t *testing.T) {
	p := startConnectProxy(t, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
	logs := &testsvc.Logs{Level: slog.LevelDebug}
	d := proxyDialer(t, http.ProxyURL(p.url("gg:s3cret@")), WithLogger(slog.New(logs)))
	defer d.Close()
	if _, err := d.DialContext(ctxTimeout(t, 5*time.Second), "10.0.0.1:443"); !errors.Is(err, dialroute.ErrProxyRefused) {
		t.Fatalf("dial = %v, want the proxy's refusal", err)
	}
	recs := logs.Records(slog.LevelDebug)
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1: %v", len(recs), recs)
	}
	r := recs[0]
	if r.Level != slog.LevelWarn || testsvc.Attr(r, "proxy") != p.ln.Addr().String() ||
		testsvc.Attr(r, "addr") != "10.0.0.1:443" || !strings.Contains(testsvc.Attr(r, "error"), "403") {
		t.Fatalf("record %v %q %v: want a warning naming the proxy, the address and the 403", r.Level, r.Message, r)
	}
	var all strings.Builder
	r.Attrs(func(a slog.Attr) bool { all.WriteString(a.String()); return true })
	if strings.Contains(all.String()+r.Message, "s3cret") {
		t.Fatalf("the record shows the proxy password: %v", r)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	direct := &testsvc.Logs{Level: slog.LevelDebug}
	dd := NewDialer(WithLogger(slog.New(direct)))
	defer dd.Close()
	if _, err := dd.DialContext(ctxTimeout(t, 5*time.Second), closed); err == nil {
		t.Fatal("dial of a closed port succeeded")
	}
	if recs := direct.Records(slog.LevelDebug); len(recs) != 1 || recs[0].Level != slog.LevelDebug || testsvc.Attr(recs[0], "proxy") != "" {
		t.Fatalf("direct dial failure logged %v, want one debug record", recs)
	}
}

// With debug off, a logger costs a call nothing: no record, and not one
// allocation more than without a logger, on a call sent once and on a call
// resent once.
func TestLoggerAtInfoAllocatesNothing(t *testing.T) {
	logs := &testsvc.Logs{Level: slog.LevelInfo}
	// A budget that pays a resend for every call, however fast the test
	// calls, and no backoff to speak of.
	opts := []Option{WithRetryBudget(1, 1e6, time.Second), WithBackoff(time.Microsecond, time.Microsecond, 1)}
	withLog := UnaryClientRetry(append(opts, WithLogger(slog.New(logs)))...)
	without := UnaryClientRetry(opts...)
	ok := func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
		return finishAsGRPC(opts, nil)
	}
	var n int
	failOnce := func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
		if n++; n%2 == 1 {
			return finishAsGRPC(opts, status.Error(codes.Unavailable, "once"))
		}
		return finishAsGRPC(opts, nil)
	}
	req, reply := wrapperspb.String("x"), new(wrapperspb.StringValue)
	ctx := context.Background()
	for name, invoker := range map[string]grpc.UnaryInvoker{"sent once": ok, "resent once": failOnce} {
		allocs := func(icpt grpc.UnaryClientInterceptor) float64 {
			call := func() {
				if err := icpt(ctx, testsvc.Get, req, reply, nil, invoker); err != nil {
					t.Fatal(err)
				}
			}
			call() // fills the caches
			return testing.AllocsPerRun(200, call)
		}
		base, logged := allocs(without), allocs(withLog)
		if logged > base {
			t.Errorf("%s: %v allocs per call with a logger at Info, %v without", name, logged, base)
		}
	}
	if recs := logs.Records(slog.LevelDebug); len(recs) != 0 {
		t.Fatalf("logged %v at Info, want nothing", recs)
	}
}

// The debug hooks, with debug off, neither format nor allocate.
func TestLoggerDebugHooksOffAllocateNothing(t *testing.T) {
	logs := &testsvc.Logs{Level: slog.LevelInfo}
	h := loggerHooks(slog.New(logs))
	ctx := context.Background()
	peer := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	err := status.Error(codes.Unavailable, "x")
	n := testing.AllocsPerRun(100, func() {
		h.OnAttempt(ctx, AttemptEvent{Method: testsvc.Get, Attempt: 1})
		h.OnRetry(ctx, RetryEvent{Method: testsvc.Get, Attempt: 1, Err: err, Peer: peer, Reason: ReasonIdempotent})
		h.OnHedge(ctx, HedgeEvent{Method: testsvc.Get, Attempt: 2})
		h.OnNotResent(ctx, NotResentEvent{Method: testsvc.Get, Attempt: 3, Err: err, Peer: peer, Reason: ReasonAttemptsExhausted})
		h.OnStaleConn(StaleConnEvent{Local: peer, Remote: peer, Reason: PeerClosed})
		h.OnConnRetired(ConnRetiredEvent{Local: peer, Remote: peer})
		h.OnDialError(DialErrorEvent{Addr: "127.0.0.1:1", Err: err})
	})
	if n != 0 {
		t.Errorf("%v allocs for the debug events with debug off, want 0", n)
	}
	if recs := logs.Records(slog.LevelDebug); len(recs) != 0 {
		t.Fatalf("logged %v at Info, want nothing", recs)
	}
	// At Info, budget exhaustion and horizon changes are logged.
	h.OnNotResent(ctx, NotResentEvent{Method: testsvc.Get, Attempt: 2, Err: err, Reason: ReasonBudgetExhausted})
	h.OnIdleHorizon(IdleHorizonEvent{Horizon: time.Minute, KeepAlive: 15 * time.Second})
	recs := logs.Records(slog.LevelDebug)
	if len(recs) != 2 || recs[0].Level != slog.LevelInfo || testsvc.Attr(recs[0], "reason") != ReasonBudgetExhausted ||
		recs[1].Level != slog.LevelInfo || testsvc.Attr(recs[1], "horizon") != time.Minute.String() {
		t.Fatalf("records %v, want the budget and the horizon at Info", recs)
	}
}

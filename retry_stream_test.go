package grpcguard

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// watch opens a Watch stream for req and returns every message received and
// the error that ended the stream (nil for a clean end).
func watch(t *testing.T, cc *grpc.ClientConn, req string, opts ...grpc.CallOption) ([]string, error) {
	t.Helper()
	ctx := ctxTimeout(t, 5*time.Second)
	s, err := cc.NewStream(ctx, testsvc.WatchDesc, testsvc.Watch, opts...)
	if err != nil {
		return nil, err
	}
	if err := s.SendMsg(wrapperspb.String(req)); err != nil {
		return nil, err
	}
	if err := s.CloseSend(); err != nil {
		return nil, err
	}
	var got []string
	for {
		m := new(wrapperspb.StringValue)
		if err := s.RecvMsg(m); err != nil {
			if err == io.EOF {
				return got, nil
			}
			return got, err
		}
		got = append(got, m.Value)
	}
}

// collect sends msgs on a Collect stream and returns the reply.
func collect(t *testing.T, cc *grpc.ClientConn, msgs ...string) (string, error) {
	t.Helper()
	s, err := cc.NewStream(ctxTimeout(t, 5*time.Second), testsvc.CollectDesc, testsvc.Collect)
	if err != nil {
		return "", err
	}
	for _, m := range msgs {
		if err := s.SendMsg(wrapperspb.String(m)); err != nil {
			return "", err
		}
	}
	if err := s.CloseSend(); err != nil {
		return "", err
	}
	out := new(wrapperspb.StringValue)
	if err := s.RecvMsg(out); err != nil {
		return "", err
	}
	return out.Value, nil
}

func TestRetryStreamWatchFailureBeforeFirstMessage(t *testing.T) {
	var calls atomic.Int32
	srv := &testsvc.Server{Watch: func(_ context.Context, req string, send func(string) error) error {
		if calls.Add(1) == 1 {
			return status.Error(codes.Unavailable, "not yet")
		}
		for _, v := range []string{"1", "2", "3"} {
			if err := send(v); err != nil {
				return err
			}
		}
		return nil
	}}
	m := NewMetrics()
	cc := retryClient(t, startServer(t, srv), m, nil)
	got, err := watch(t, cc, "w")
	if err != nil || !slices.Equal(got, []string{"1", "2", "3"}) {
		t.Fatalf("Watch = %v, %v; want [1 2 3], nil: each message exactly once", got, err)
	}
	if n := srv.Runs(testsvc.Watch, "w"); n != 2 {
		t.Errorf("server ran Watch %d times, want 2", n)
	}
	if got := srv.PreviousAttempts(); !slices.Equal(got, []int{0, 1}) {
		t.Errorf("grpc-previous-rpc-attempts = %v, want [0 1]", got)
	}
	if n := retriedCount(m, testsvc.Watch, codes.Unavailable); n != 1 {
		t.Errorf("retries_total = %d, want 1", n)
	}
}

func TestRetryStreamWatchFailureAfterMessageIsNotRetried(t *testing.T) {
	srv := &testsvc.Server{Watch: func(_ context.Context, req string, send func(string) error) error {
		if err := send("1"); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "gone after one")
	}}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil)
	got, err := watch(t, cc, "w")
	if status.Code(err) != codes.Unavailable || !slices.Equal(got, []string{"1"}) {
		t.Fatalf("Watch = %v, %v; want [1] then Unavailable", got, err)
	}
	if n := srv.Runs(testsvc.Watch, "w"); n != 1 {
		t.Errorf("server ran Watch %d times, want 1: a delivered message commits the stream", n)
	}
}

func TestRetryStreamCollectReplaysBelowBufferLimit(t *testing.T) {
	var calls atomic.Int32
	srv := &testsvc.Server{Collect: func(_ context.Context, msgs []string) (string, error) {
		if calls.Add(1) == 1 {
			return "", status.Error(codes.Unavailable, "lost them")
		}
		return strings.Join(msgs, ""), nil
	}}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil)
	got, err := collect(t, cc, "a", "b", "c")
	if err != nil || got != "abc" {
		t.Fatalf("Collect = %q, %v; want abc, nil", got, err)
	}
	if n := srv.Runs(testsvc.Collect, "[a b c]"); n != 2 {
		t.Errorf("server received the full replay %d times, want 2 (original and retry)", n)
	}
}

func TestRetryStreamCollectCommitsPastBufferLimit(t *testing.T) {
	var calls atomic.Int32
	srv := &testsvc.Server{Collect: func(_ context.Context, msgs []string) (string, error) {
		if calls.Add(1) == 1 {
			return "", status.Error(codes.Unavailable, "lost them")
		}
		return strings.Join(msgs, ""), nil
	}}
	// Each message "aaaaaa" is 8 bytes encoded: the second one does not fit.
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil, WithRetryBufferSize(10))
	_, err := collect(t, cc, "aaaaaa", "bbbbbb")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable: the stream committed", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("server saw %d attempts, want 1", n)
	}
}

func TestRetryStreamPerAttemptTimeout(t *testing.T) {
	var calls atomic.Int32
	srv := &testsvc.Server{Watch: func(ctx context.Context, req string, send func(string) error) error {
		if calls.Add(1) == 1 {
			<-ctx.Done() // the first attempt hangs
			return ctx.Err()
		}
		if err := send("1"); err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond) // longer than the per-attempt timeout, after commit
		return send("2")
	}}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil, WithPerAttemptTimeout(100*time.Millisecond))
	got, err := watch(t, cc, "w")
	if err != nil || !slices.Equal(got, []string{"1", "2"}) {
		t.Fatalf("Watch = %v, %v; want [1 2], nil: retried once, then not cut by the attempt timeout", got, err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("server saw %d attempts, want 2", n)
	}
}

func TestRetryStreamWatchAfterConnectionReset(t *testing.T) {
	srv := &testsvc.Server{}
	const idle = 100 * time.Millisecond
	p := startProxy(t, startServer(t, srv), faultproxy.Config{Mode: faultproxy.ResetFirstBytesAfterIdle, Idle: idle})
	cc := retryClient(t, p.Addr(), NewMetrics(), nil)
	for i := range 4 {
		time.Sleep(idle + 20*time.Millisecond) // the idle gap is the scenario
		req := fmt.Sprint("w", i)
		got, err := watch(t, cc, req)
		if err != nil || !slices.Equal(got, []string{req, req, req}) {
			t.Fatalf("Watch %d = %v, %v; want three messages, once each", i, got, err)
		}
	}
	if p.Stats().RSTs == 0 {
		t.Error("the proxy reset nothing: the scenario did not happen")
	}
}

// TestRetryStreamContextStable: the context a caller takes from a stream
// before its first message stays the stream's through a retry: the same
// value, not done while the stream lives, holding the current attempt's
// peer, and done once the stream has ended.
func TestRetryStreamContextStable(t *testing.T) {
	var calls atomic.Int32
	srv := &testsvc.Server{Watch: func(_ context.Context, req string, send func(string) error) error {
		if calls.Add(1) == 1 {
			return status.Error(codes.Unavailable, "not yet")
		}
		return send(req)
	}}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil)
	s, err := cc.NewStream(ctxTimeout(t, 5*time.Second), testsvc.WatchDesc, testsvc.Watch)
	if err != nil {
		t.Fatal(err)
	}
	ctx := s.Context()
	if err := s.SendMsg(wrapperspb.String("w")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	m := new(wrapperspb.StringValue)
	if err := s.RecvMsg(m); err != nil || m.Value != "w" {
		t.Fatalf("RecvMsg = %q, %v; want the retry's message", m.Value, err)
	}
	if calls.Load() != 2 {
		t.Fatalf("%d attempts, want 2: the scenario is a retried stream", calls.Load())
	}
	if ctx.Err() != nil {
		t.Errorf("the stream's context ended with its first attempt: %v", ctx.Err())
	}
	if s.Context() != ctx {
		t.Error("Context changed with the attempt")
	}
	if p, ok := peer.FromContext(ctx); !ok || p.Addr == nil {
		t.Error("no peer in the stream's context")
	}
	if err := s.RecvMsg(m); err != io.EOF {
		t.Fatalf("RecvMsg = %v, want io.EOF", err)
	}
	waitFor(t, time.Second, "the stream's context to end with the stream", func() bool { return ctx.Err() != nil })
	derived, cancel := context.WithCancel(ctx) // derives without a goroutine (goleak checks)
	defer cancel()
	if derived.Err() == nil {
		t.Error("a context derived from the ended stream's is not done")
	}
}

// TestRetryPolicyCommitsAtHeaders: under a service config retryPolicy a
// call is not retried once the server's response headers arrived, as grpc-go
// does; a trailers-only failure is. Unary calls and streams alike.
func TestRetryPolicyCommitsAtHeaders(t *testing.T) {
	headersFirst := func(ctx context.Context, req string) {
		if strings.HasPrefix(req, "headers") {
			grpc.SendHeader(ctx, metadata.Pairs("started", "yes"))
		}
	}
	srv := &testsvc.Server{
		Unary: func(ctx context.Context, _, req string) (string, error) {
			if previousAttempts(ctx) == 0 {
				headersFirst(ctx, req)
				return "", status.Error(codes.Unavailable, "once")
			}
			return req, nil
		},
		Watch: func(ctx context.Context, req string, send func(string) error) error {
			if previousAttempts(ctx) == 0 {
				headersFirst(ctx, req)
				return status.Error(codes.Unavailable, "once")
			}
			return send(req)
		},
	}
	cc := retryClient(t, startServer(t, srv), NewMetrics(), nil, WithServiceConfig(`{"methodConfig":[{
		"name":[{"service":"grpcguard.testing.Echo"}],
		"retryPolicy":{"maxAttempts":3,"initialBackoff":"0.001s","maxBackoff":"0.005s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}`))
	for _, req := range []string{"trailers-only", "headers"} {
		wantRuns, wantErr := 2, codes.OK
		if req == "headers" {
			wantRuns, wantErr = 1, codes.Unavailable
		}
		_, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, req)
		if status.Code(err) != wantErr || srv.Runs(testsvc.Get, req) != wantRuns {
			t.Errorf("unary %s: %v after %d attempts, want %v after %d", req, err, srv.Runs(testsvc.Get, req), wantErr, wantRuns)
		}
		_, err = watch(t, cc, req)
		if status.Code(err) != wantErr || srv.Runs(testsvc.Watch, req) != wantRuns {
			t.Errorf("stream %s: %v after %d attempts, want %v after %d", req, err, srv.Runs(testsvc.Watch, req), wantErr, wantRuns)
		}
	}
}

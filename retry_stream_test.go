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

package grpcguard

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Retirement closes only conns that carry nothing (issue 17, item 3). Each
// case ran on a client that retires conns idle 300ms, with default options
// otherwise, and failed before: the slow call or the stream died with
// Unavailable and was not resent.

// slowServer answers "slow" after d and anything else at once.
func slowServer(d time.Duration) *testsvc.Server {
	return &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
		if req == "slow" {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		return req, nil
	}}
}

// callAsync starts a call and returns its error on a channel.
func callAsync(cc *grpc.ClientConn, req string) <-chan error {
	ch := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := testsvc.Call(ctx, cc, testsvc.Echo, req)
		ch <- err
	}()
	return ch
}

func mustCall(t *testing.T, cc *grpc.ClientConn, req string) {
	t.Helper()
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, req); err != nil {
		t.Fatalf("call %q: %v", req, err)
	}
}

// A slow non-idempotent call in flight while quick calls come and go past the
// horizon: nothing is retired under it.
func TestRetireSparesSlowCallAmongQuickOnes(t *testing.T) {
	srv := slowServer(1200 * time.Millisecond)
	m := NewMetrics()
	cc := bundleClient(t, startServer(t, srv), WithMetrics(m), WithMaxIdle(300*time.Millisecond))
	mustCall(t, cc, "warm-up")
	slow := callAsync(cc, "slow")
	time.Sleep(50 * time.Millisecond)
	mustCall(t, cc, "quick 1")
	time.Sleep(350 * time.Millisecond)
	mustCall(t, cc, "quick 2")
	if err := <-slow; err != nil {
		t.Fatalf("the slow call failed: %v", err)
	}
	if n := srv.Runs(testsvc.Echo, "slow"); n != 1 {
		t.Errorf("the slow call ran %d times, want 1", n)
	}
	if n := testutil.ToFloat64(m.retiredBy[1]); n != 0 {
		t.Errorf("%v conns retired under a call in flight", n)
	}
}

// A slow call alone, with the sweep looking every 20ms.
func TestRetireSparesSlowCallAlone(t *testing.T) {
	srv := slowServer(1200 * time.Millisecond)
	cc := bundleClient(t, startServer(t, srv), WithMaxIdle(300*time.Millisecond), WithSweepInterval(20*time.Millisecond))
	mustCall(t, cc, "warm-up")
	if err := <-callAsync(cc, "slow"); err != nil {
		t.Fatalf("the slow call failed: %v", err)
	}
}

// A server stream whose messages come every 500ms outlives any horizon.
func TestRetireSparesOpenStream(t *testing.T) {
	const msgs = 4
	srv := &testsvc.Server{Watch: func(ctx context.Context, req string, send func(string) error) error {
		for i := range msgs {
			if i > 0 {
				time.Sleep(500 * time.Millisecond)
			}
			if err := send(fmt.Sprint(i)); err != nil {
				return err
			}
		}
		return nil
	}}
	m := NewMetrics()
	cc := bundleClient(t, startServer(t, srv), WithMetrics(m), WithMaxIdle(300*time.Millisecond), WithSweepInterval(20*time.Millisecond))
	mustCall(t, cc, "warm-up")
	ctx := ctxTimeout(t, 10*time.Second)
	s, err := cc.NewStream(ctx, testsvc.WatchDesc, testsvc.Watch)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendMsg(wrapperspb.String("w")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got := 0
	for {
		var v wrapperspb.StringValue
		err := s.RecvMsg(&v)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", got, msgs, err)
		}
		got++
	}
	if got != msgs {
		t.Fatalf("received %d messages, want %d", got, msgs)
	}
	// The stream ended: the conn carries nothing and is retired.
	waitFor(t, 5*time.Second, "retirement after the stream ended", func() bool {
		return testutil.ToFloat64(m.retiredBy[1]) == 1
	})
}

// A path that really closes flows idle 300ms, a learned horizon that is right,
// and a slow call whose reply comes 270ms after the conn's last I/O: the
// server sends the response headers at once, then the reply.
func TestRetireSparesCallAwaitingItsReply(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
		if err := grpc.SendHeader(ctx, metadata.MD{}); err != nil {
			return "", err
		}
		if req == "slow" {
			time.Sleep(270 * time.Millisecond)
		}
		return req, nil
	}}
	p := startProxy(t, startServer(t, srv), faultproxy.Config{Mode: faultproxy.FINAfterIdle, Idle: 300 * time.Millisecond})
	dopts, d := spyDialOptions(t, WithSweepInterval(10*time.Millisecond))
	cc := newClient(t, p.Addr(), dopts...)
	mustCall(t, cc, "warm-up")
	now := nanotime()
	d.Load().horizon.observe(idleDeath{idle: 300 * time.Millisecond, path: 300 * time.Millisecond, at: now})
	d.Load().horizon.observe(idleDeath{idle: 310 * time.Millisecond, path: 310 * time.Millisecond, at: now + int64(time.Second)})
	if d.Load().horizon.retireAge() != 240*time.Millisecond {
		t.Fatalf("retire age %v, want 240ms", d.Load().horizon.retireAge())
	}
	for i := range 3 {
		if err := <-callAsync(cc, "slow"); err != nil {
			t.Fatalf("slow call %d failed: %v", i, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// One FIN 40ms after a call (a server restart), then 40 calls 60ms apart: one
// death teaches no retirement, so the calls share one new conn.
func TestOneEarlyDeathRetiresNothing(t *testing.T) {
	srv := &testsvc.Server{}
	p := startProxy(t, startServer(t, srv), faultproxy.Config{})
	m := NewMetrics()
	cc := bundleClient(t, p.Addr(), WithMetrics(m))
	mustCall(t, cc, "warm-up")
	time.Sleep(40 * time.Millisecond)
	p.CloseAll(false)
	waitFor(t, 5*time.Second, "the death seen", func() bool { return staleTotal(m) == 1 })
	for i := range 40 {
		time.Sleep(60 * time.Millisecond)
		mustCall(t, cc, fmt.Sprint(i))
	}
	if n := p.Stats().Accepted - 1; n > 5 {
		t.Errorf("%d new conns for 40 calls after one early death, want at most 5", n)
	}
	if n := testutil.ToFloat64(m.retiredBy[0]); n != 0 {
		t.Errorf("%v conns retired after one death", n)
	}
}

// At 120ms RTT, with a horizon far shorter than the handshake, open-loop
// calls every 5ms for 1.5s: no handshake is retired and every call succeeds.
func TestRetireSparesHandshake(t *testing.T) {
	if testing.Short() {
		t.Skip("handshake: skipped in -short mode")
	}
	srv := &testsvc.Server{}
	p := startProxy(t, startServer(t, srv), faultproxy.Config{Delay: 60 * time.Millisecond})
	m := NewMetrics()
	cc := bundleClient(t, p.Addr(), WithMetrics(m), WithMaxIdle(41*time.Millisecond))
	var failed atomic.Int64
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := testsvc.Call(ctx, cc, testsvc.Echo, fmt.Sprint(i)); err != nil {
				if failed.Add(1) == 1 {
					t.Logf("call %d: %v", i, err)
				}
			}
		})
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of 300 calls failed at 120ms RTT with a 41ms horizon", n)
	}
	if n := srv.MaxRuns(testsvc.Echo); n > 1 {
		t.Errorf("a call ran %d times", n)
	}
}

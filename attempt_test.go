package grpcguard

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// finishAsGRPC does what grpc does before its invoker returns: it calls the
// call's grpc.OnFinish options with the result, here without a transport.
// Tests whose invoker stands in for grpc use it.
func finishAsGRPC(opts []grpc.CallOption, err error) error {
	for _, o := range opts {
		if f, ok := o.(grpc.OnFinishCallOption); ok {
			f.OnFinish(err)
		}
	}
	return err
}

// giveUpAfter is a user's interceptor chained after DialOptions that runs
// grpc's call in a goroutine and gives up on it after d (a bulkhead, a
// hystrix-style timeout). wg counts the calls it left running.
func giveUpAfter(d time.Duration, wg *sync.WaitGroup) (grpc.UnaryClientInterceptor, grpc.StreamClientInterceptor) {
	unary := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		done := make(chan error, 1)
		wg.Go(func() { done <- invoker(ctx, method, req, reply, cc, opts...) })
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case err := <-done:
			return err
		case <-t.C:
			return status.Error(codes.Unavailable, "bulkhead: gave up waiting")
		}
	}
	stream := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		type created struct {
			s   grpc.ClientStream
			err error
		}
		done := make(chan created, 1)
		wg.Go(func() {
			s, err := streamer(ctx, desc, cc, method, opts...)
			done <- created{s, err}
		})
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case c := <-done:
			return c.s, c.err
		case <-t.C:
			return nil, status.Error(codes.Unavailable, "bulkhead: gave up waiting")
		}
	}
	return unary, stream
}

// TestInnerInterceptorGivingUpRunsCallOnce: an attempt that an inner
// interceptor gave up on still has an empty peer when it returns, which once
// read as "no transport, never left": the non-idempotent call was resent
// and ran 3 times, and grpc wrote the pooled peer and trailer storage after
// it was reused (-race). Only grpc's own word that it finished the attempt
// (grpc.OnFinish) now proves "no transport" (issue 19, item 2).
func TestInnerInterceptorGivingUpRunsCallOnce(t *testing.T) {
	srv := &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
		if req == "slow" {
			time.Sleep(200 * time.Millisecond)
		}
		return req, nil
	}}
	dopts, err := DialOptions()
	if err != nil {
		t.Fatal(err)
	}
	var inner sync.WaitGroup
	defer inner.Wait()
	unary, _ := giveUpAfter(50*time.Millisecond, &inner)
	cc := newClient(t, startServer(t, srv), append(dopts, grpc.WithChainUnaryInterceptor(unary))...)
	mustCall(t, cc, "warm-up")
	for i := range 4 {
		_, err = testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "slow")
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call %d returned %v, want the inner interceptor's Unavailable", i, err)
		}
	}
	inner.Wait() // every grpc call the interceptor gave up on has ended
	if n := srv.Runs(testsvc.Echo, "slow"); n != 4 {
		t.Errorf("4 non-idempotent calls ran %d times, want 4: an attempt an inner interceptor gave up on was resent", n)
	}
}

// TestInnerStreamInterceptorGivingUpNotResent: the same for the creation of
// a stream of a method that is not idempotent.
func TestInnerStreamInterceptorGivingUpNotResent(t *testing.T) {
	srv := &testsvc.Server{}
	dopts, err := DialOptions()
	if err != nil {
		t.Fatal(err)
	}
	var inner sync.WaitGroup
	defer inner.Wait()
	_, stream := giveUpAfter(0, &inner)
	created := 0
	counting := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		created++ // on the caller's goroutine: the interceptor above runs it there
		return stream(ctx, desc, cc, method, streamer, opts...)
	}
	cc := newClient(t, startServer(t, srv), append(dopts, grpc.WithChainStreamInterceptor(counting))...)
	mustCall(t, cc, "warm-up")
	_, err = cc.NewStream(ctxTimeout(t, 5*time.Second), testsvc.ChatDesc, testsvc.Chat) // not idempotent
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("NewStream returned %v, want the inner interceptor's Unavailable", err)
	}
	if created != 1 {
		t.Errorf("%d stream attempts, want 1: a stream an inner interceptor gave up on was resent", created)
	}
}

// TestInnerInterceptorFailingWithoutGRPC: an inner interceptor that fails an
// attempt without calling grpc (a local rate limiter) gives no proof that
// the attempt never left: a non-idempotent call is not resent, an idempotent
// one is.
func TestInnerInterceptorFailingWithoutGRPC(t *testing.T) {
	srv := &testsvc.Server{}
	dopts, err := DialOptions(WithIdempotentMethods(testsvc.Get), WithBackoff(time.Millisecond, time.Millisecond, 1))
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]int{}
	var mu sync.Mutex
	limiter := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		mu.Lock()
		defer mu.Unlock()
		if refused[method]++; refused[method] == 1 {
			return status.Error(codes.Unavailable, "rate limited")
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	cc := newClient(t, startServer(t, srv), append(dopts, grpc.WithChainUnaryInterceptor(limiter))...)
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x"); status.Code(err) != codes.Unavailable {
		t.Errorf("non-idempotent: %v, want the limiter's Unavailable, not resent", err)
	}
	if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Get, "y"); err != nil {
		t.Errorf("idempotent: %v, want success on the resend", err)
	}
}

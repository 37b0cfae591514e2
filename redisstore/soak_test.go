package redisstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// resender resends a call that failed with Unavailable, with the same
// request id, marked as a resend under the scope the replicas advertised:
// what the client's retry does once it relies on deduplication, done here by
// hand so that the server half is proven on its own.
type resender struct {
	scope   atomic.Pointer[string]
	resends atomic.Int64
}

func (r *resender) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	start := time.Now()
	for attempt := 0; ; attempt++ {
		actx := ctx
		if attempt > 0 {
			scope := ""
			if s := r.scope.Load(); s != nil {
				scope = *s
			}
			actx = metadata.AppendToOutgoingContext(ctx, grpcguard.ResendHeader,
				"scope="+scope+";age-ms="+strconv.FormatInt(time.Since(start).Milliseconds(), 10))
			r.resends.Add(1)
		}
		var hdr metadata.MD
		err := invoker(actx, method, req, reply, cc, append(opts[:len(opts):len(opts)], grpc.Header(&hdr))...)
		if v := hdr.Get(grpcguard.DedupHeader); len(v) == 1 {
			for _, f := range strings.Split(v[0], ";") {
				if s, ok := strings.CutPrefix(f, "scope="); ok {
					r.scope.Store(&s)
				}
			}
		}
		if status.Code(err) != codes.Unavailable || attempt == 19 || ctx.Err() != nil {
			return err
		}
		select {
		case <-time.After(time.Duration(min(attempt+1, 4)) * 5 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// TestReplicasSoakEveryIDRunsOnce: 32 callers call the non-idempotent Echo,
// each call with its own id, over two replicas sharing one Redis behind
// round_robin, each replica behind a fault proxy that per connection closes
// idle connections (FIN, RST), resets the first bytes after idle, loses the
// reply after the replica ran the call, or passes, and that closes
// connections under calls in flight now and then. Every failed call is
// resent with its id, to whichever replica round_robin picks. No call fails,
// and every request runs exactly once across the replicas.
func TestReplicasSoakEveryIDRunsOnce(t *testing.T) {
	const (
		callers   = 32
		perCaller = 30
		idle      = 100 * time.Millisecond
	)
	r := startRedis(t)
	echo := func(ctx context.Context, method, req string) (string, error) { return req, nil }
	a := startReplica(t, "A", r.store(t, Options{}), echo)
	b := startReplica(t, "B", r.store(t, Options{}), echo)
	modes := []faultproxy.Mode{faultproxy.FINAfterIdle, faultproxy.RSTAfterIdle, faultproxy.ResetFirstBytesAfterIdle,
		faultproxy.LostReply, faultproxy.Pass}
	var proxies []*faultproxy.Proxy
	for i, rep := range []*replica{a, b} {
		p, err := faultproxy.Start(rep.addr, faultproxy.Config{Choose: faultproxy.Random(uint64(0xab+i), modes...), Idle: idle})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		proxies = append(proxies, p)
	}
	var rs resender
	// A proxy may reset a connection before its preface: reconnect at once
	// rather than after grpc-go's default backoff of a second.
	cc := roundRobin(t, []string{proxies[0].Addr(), proxies[1].Addr()}, grpc.WithChainUnaryInterceptor(rs.unary),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.6, MaxDelay: 50 * time.Millisecond}}))
	ctx := ctxTimeout(t, 60*time.Second)

	stop := make(chan struct{})
	closerDone := make(chan struct{})
	go func() {
		defer close(closerDone)
		rnd := rand.New(rand.NewPCG(9, 9))
		for {
			select {
			case <-stop:
				return
			case <-time.After(20*time.Millisecond + time.Duration(rnd.IntN(40))*time.Millisecond):
				proxies[rnd.IntN(2)].CloseAll(rnd.IntN(2) == 0)
			}
		}
	}()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(c), 2))
			for i := range perCaller {
				req := fmt.Sprintf("c%d-%d", c, i)
				out, err := testsvc.Call(withID(ctx, req), cc, testsvc.Echo, req)
				if err != nil || out != req {
					failed.Add(1)
					t.Errorf("%s: %q, %v", req, out, err)
				}
				if rnd.IntN(8) == 0 {
					time.Sleep(idle + time.Duration(rnd.IntN(int(idle))))
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-closerDone
	var lost int64
	for _, p := range proxies {
		lost += p.Stats().LostReplies
	}
	t.Logf("replicas soak: %d calls, %d failed, %d resends, %d lost replies; A ran %d, B ran %d; proxies %+v %+v",
		callers*perCaller, failed.Load(), rs.resends.Load(), lost, a.srv.Calls(), b.srv.Calls(), proxies[0].Stats(), proxies[1].Stats())
	for c := range callers {
		for i := range perCaller {
			req := fmt.Sprintf("c%d-%d", c, i)
			if n := a.srv.Runs(testsvc.Echo, req) + b.srv.Runs(testsvc.Echo, req); n != 1 {
				t.Errorf("%s ran %d times across the replicas, want exactly 1", req, n)
			}
		}
	}
	if lost == 0 || rs.resends.Load() == 0 {
		t.Fatalf("the faults did not happen: %d lost replies, %d resends", lost, rs.resends.Load())
	}
}

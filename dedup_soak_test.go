package grpcguard

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// testResender resends a call that failed with Unavailable, with the same
// request id, marked as a resend under the scope the server advertised: what
// the client's retry does once it relies on deduplication, done here by hand
// (until the retry's one safety decision uses dedupCovers) so that the
// server half is proven on its own. It resends every method, so it must only
// be used against a deduplicating server.
type testResender struct {
	scope   atomic.Pointer[string]
	resends atomic.Int64
}

func (r *testResender) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	start := time.Now()
	for attempt := 0; ; attempt++ {
		actx := ctx
		if attempt > 0 {
			scope := ""
			if s := r.scope.Load(); s != nil {
				scope = *s
			}
			actx = metadata.AppendToOutgoingContext(ctx, ResendHeader,
				"scope="+scope+";age-ms="+strconv.FormatInt(time.Since(start).Milliseconds(), 10))
			r.resends.Add(1)
		}
		var hdr, trl metadata.MD
		err := invoker(actx, method, req, reply, cc, append(opts[:len(opts):len(opts)], grpc.Header(&hdr), grpc.Trailer(&trl))...)
		if a, ok := parseAdvert(hdr); ok {
			r.scope.Store(&a.scope)
		}
		if status.Code(err) != codes.Unavailable || attempt == 19 || ctx.Err() != nil {
			return err
		}
		if err := sleep(ctx, time.Duration(min(attempt+1, 4))*5*time.Millisecond); err != nil {
			return err
		}
	}
}

// TestDedupSoakEveryIDRunsOnce: 32 callers call the non-idempotent Echo
// through a fault proxy that, per connection, closes idle connections with
// FIN or RST, resets the first bytes after idle, loses the reply after the
// server ran the call, or passes, and that closes connections under calls in
// flight now and then; every failed call is resent with its id.
// No call fails, and the server runs every request exactly once.
func TestDedupSoakEveryIDRunsOnce(t *testing.T) {
	const (
		callers   = 32
		perCaller = 40
		idle      = 100 * time.Millisecond
	)
	m := NewDedupMetrics()
	srv := &testsvc.Server{}
	addr := dedupServer(t, srv, nil, nil, WithDedupMetrics(m))
	modes := []faultproxy.Mode{faultproxy.FINAfterIdle, faultproxy.RSTAfterIdle, faultproxy.ResetFirstBytesAfterIdle,
		faultproxy.LostReply, faultproxy.Pass}
	p := startProxy(t, addr, faultproxy.Config{Choose: faultproxy.Random(0xded0, modes...), Idle: idle})
	var rs testResender
	ids := newRequestIDs(nil)
	// A proxy may reset a connection before its preface (the first bytes
	// after the idle time): the client reconnects at once rather than after
	// grpc-go's default backoff of a second, which would outlast the resends.
	cc := newClient(t, p.Addr(), grpc.WithChainUnaryInterceptor(ids.unary, rs.unary), fastReconnect)
	ctx := ctxTimeout(t, 60*time.Second)

	// Connections are also closed under the callers now and then, FIN or
	// RST, calls in flight or not, so that new connections draw new modes.
	stop := make(chan struct{})
	closerDone := make(chan struct{})
	go func() {
		defer close(closerDone)
		r := rand.New(rand.NewPCG(9, 9))
		for {
			select {
			case <-stop:
				return
			case <-time.After(20*time.Millisecond + time.Duration(r.IntN(40))*time.Millisecond):
				p.CloseAll(r.IntN(2) == 0)
			}
		}
	}()
	var failed atomic.Int64
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 1))
			for i := range perCaller {
				req := fmt.Sprintf("c%d-%d", c, i)
				if out, err := testsvc.Call(ctx, cc, testsvc.Echo, req); err != nil || out != req {
					failed.Add(1)
					t.Errorf("%s: %q, %v", req, out, err)
				}
				if r.IntN(8) == 0 { // now and then a quiet time, so idle faults fire
					time.Sleep(idle + time.Duration(r.IntN(int(idle))))
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-closerDone
	st := p.Stats()
	t.Logf("dedup soak: %d calls, %d failed, %d resends; proxy %+v; executions %v, answered %v, waited %v, refused %v",
		callers*perCaller, failed.Load(), rs.resends.Load(), st, counterValue(m.executions), counterValue(m.answered),
		counterValue(m.waited), counterValue(m.refused))
	for c := range callers {
		for i := range perCaller {
			req := fmt.Sprintf("c%d-%d", c, i)
			if n := srv.Runs(testsvc.Echo, req); n != 1 {
				t.Errorf("%s ran %d times, want exactly 1", req, n)
			}
		}
	}
	if st.LostReplies == 0 || st.RSTs == 0 || rs.resends.Load() == 0 {
		t.Fatalf("the faults did not happen: proxy %+v, %d resends", st, rs.resends.Load())
	}
}

func counterValue(c interface{ Inc() }) float64 {
	return testutil.ToFloat64(c.(prometheus.Collector))
}

// fastReconnect makes a client redial within milliseconds of a failed
// connection attempt.
var fastReconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff: backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.6, MaxDelay: 50 * time.Millisecond},
})

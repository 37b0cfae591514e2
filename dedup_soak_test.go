package grpcguard

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestDedupSoakEveryIDRunsOnce: 64 callers of a client made with DialOptions
// call idempotent (Get, Put) and non-idempotent (Echo) methods of a server
// running UnaryServerDedup with the in-memory store, through a fault proxy
// that, per connection, closes idle connections with FIN or RST, resets the
// first bytes after idle, loses the reply after the server ran the call, or
// passes, and that closes connections under calls in flight now and then.
// The client learned from the server's responses that it deduplicates, so its
// own retry resends an Echo that may have run, with the same id. No call of
// any method fails, and the server runs every request exactly once.
func TestDedupSoakEveryIDRunsOnce(t *testing.T) {
	const (
		callers   = 64
		perCaller = 60
		idle      = 100 * time.Millisecond
	)
	dm := NewDedupMetrics()
	srv := &testsvc.Server{}
	addr := dedupServer(t, srv, nil, nil, WithDedupMetrics(dm))
	modes := []faultproxy.Mode{faultproxy.FINAfterIdle, faultproxy.RSTAfterIdle, faultproxy.ResetFirstBytesAfterIdle,
		faultproxy.LostReply, faultproxy.Pass}
	p := startProxy(t, addr, faultproxy.Config{Choose: faultproxy.Random(0xded0, modes...), Idle: idle})
	m := NewMetrics()
	// At most 5 attempts: the proxy faults four connections in five and
	// closes one under 64 callers every 200-400ms, far denser than any real
	// path; with 3, a call now and then meets three faults in a row. The
	// budget is the default: every close fails up to 64 calls at once.
	cc := bundleClient(t, p.Addr(), WithMetrics(m), WithMaxAttempts(5))
	ctx := ctxTimeout(t, 60*time.Second)
	methods := []string{testsvc.Get, testsvc.Put, testsvc.Echo}
	// The client learns, from its own responses, that the server
	// deduplicates each method: it resends nothing on that account before.
	for _, method := range methods {
		waitFor(t, 10*time.Second, "a response advertising deduplication of "+method, func() bool {
			var hdr metadata.MD
			_, err := testsvc.Call(ctx, cc, method, "warm-up", grpc.Header(&hdr))
			_, ok := parseAdvert(hdr)
			return err == nil && ok
		})
	}

	stop := make(chan struct{})
	closerDone := make(chan struct{})
	go func() {
		defer close(closerDone)
		r := rand.New(rand.NewPCG(9, 9))
		for {
			select {
			case <-stop:
				return
			case <-time.After(200*time.Millisecond + time.Duration(r.IntN(200))*time.Millisecond):
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
				if out, err := testsvc.Call(ctx, cc, methods[(c+i)%3], req); err != nil || out != req {
					failed.Add(1)
					t.Errorf("%s %s: %q, %v", methods[(c+i)%3], req, out, err)
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
	dedupRetries := testutil.ToFloat64(m.retryDedup.WithLabelValues(testsvc.Service, "Echo"))
	t.Logf("dedup soak: %d calls, %d failed; %v Echo resends relying on deduplication, %d retries refused by the budget; proxy %+v; executions %v, answered %v, waited %v, refused %v",
		callers*perCaller, failed.Load(), dedupRetries, throttled(m), st, counterValue(dm.executions), counterValue(dm.answered),
		counterValue(dm.waited), counterValue(dm.refused))
	for c := range callers {
		for i := range perCaller {
			req := fmt.Sprintf("c%d-%d", c, i)
			if n := srv.Runs(methods[(c+i)%3], req); n != 1 {
				t.Errorf("%s %s ran %d times, want exactly 1", methods[(c+i)%3], req, n)
			}
		}
	}
	if st.LostReplies == 0 || st.RSTs == 0 || dedupRetries == 0 {
		t.Fatalf("the faults did not happen: proxy %+v, %v resends relying on deduplication", st, dedupRetries)
	}
}

// Without UnaryServerDedup the client never resends a non-idempotent call
// that may have reached the server: a lost reply fails the call, which ran
// once.
func TestDedupNotAssumed(t *testing.T) {
	srv := &testsvc.Server{}
	p := startProxy(t, startServer(t, srv), faultproxy.Config{Mode: faultproxy.LostReply})
	m := NewMetrics()
	cc := bundleClient(t, p.Addr(), WithMetrics(m))
	ctx := ctxTimeout(t, 10*time.Second)
	for i := range 10 {
		req := fmt.Sprintf("lost-%d", i)
		if _, err := testsvc.Call(ctx, cc, testsvc.Echo, req); status.Code(err) != codes.Unavailable {
			t.Fatalf("%s: %v, want Unavailable: its reply was lost", req, err)
		}
		if n := srv.Runs(testsvc.Echo, req); n != 1 {
			t.Fatalf("%s ran %d times, want 1", req, n)
		}
	}
	if p.Stats().LostReplies == 0 {
		t.Fatal("no reply was lost: the case did not arise")
	}
	if n := testutil.CollectAndCount(m.retryDedup); n != 0 {
		t.Errorf("%d series of resends relying on deduplication, want none", n)
	}
}

func counterValue(c interface{ Inc() }) float64 {
	return testutil.ToFloat64(c.(prometheus.Collector))
}

// throttled counts the retries the budget refused, of every method.
func throttled(m *Metrics) int {
	n := 0.0
	for _, method := range []string{"Get", "Put", "Echo"} {
		n += testutil.ToFloat64(m.retryThrottled.WithLabelValues(testsvc.Service, method))
	}
	return int(n)
}

package redisstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus"
)

// TestReplicasSoakEveryIDRunsOnce: 64 callers of a client made with
// grpcguard.DialOptions call idempotent (Get, Put) and non-idempotent (Echo)
// methods, each call with its own id, over two replicas sharing one Redis
// behind round_robin, each replica behind a fault proxy that per connection
// closes idle connections (FIN, RST), resets the first bytes after idle,
// loses the reply after the replica ran the call, or passes, and that closes
// connections under calls in flight now and then. The client's own retry
// resends a failed Echo with its id (the servers' shared store is declared
// with WithServerDedup), to whichever replica round_robin picks. No call
// fails, and every request runs exactly once across the replicas.
func TestReplicasSoakEveryIDRunsOnce(t *testing.T) {
	const (
		callers   = 64
		perCaller = 40
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
	m := grpcguard.NewMetrics()
	// At most 5 attempts: four connections in five are faulted and one is
	// closed under the callers every 200-400ms, far denser than any real
	// path. The budget is the default.
	dopts, err := grpcguard.DialOptions(grpcguard.WithMetrics(m), grpcguard.WithMaxAttempts(5),
		grpcguard.WithServerDedup("/"+testsvc.Service+"/*"))
	if err != nil {
		t.Fatal(err)
	}
	cc := roundRobin(t, []string{proxies[0].Addr(), proxies[1].Addr()}, dopts...)
	ctx := ctxTimeout(t, 60*time.Second)
	// The store's history begins with its first claim: a resend of a call
	// whose first attempt began before it is refused, since the store cannot
	// tell a new Redis from one that lost its data. A deployment's first
	// call does that; here one before the callers start.
	if _, err := testsvc.Call(withID(ctx, "warm-up"), dial(t, "passthrough:///"+a.addr), testsvc.Echo, "warm-up"); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	closerDone := make(chan struct{})
	go func() {
		defer close(closerDone)
		rnd := rand.New(rand.NewPCG(9, 9))
		for {
			select {
			case <-stop:
				return
			case <-time.After(200*time.Millisecond + time.Duration(rnd.IntN(200))*time.Millisecond):
				proxies[rnd.IntN(2)].CloseAll(rnd.IntN(2) == 0)
			}
		}
	}()
	methods := []string{testsvc.Get, testsvc.Put, testsvc.Echo}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(c), 2))
			for i := range perCaller {
				req := fmt.Sprintf("c%d-%d", c, i)
				out, err := testsvc.Call(ctx, cc, methods[(c+i)%3], req)
				if err != nil || out != req {
					failed.Add(1)
					t.Errorf("%s %s: %q, %v", methods[(c+i)%3], req, out, err)
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
	resends := countSeries(t, m, "grpcguard_retries_deduplicated_total")
	t.Logf("replicas soak: %d calls, %d failed, %v resends relying on deduplication, %d lost replies; A ran %d, B ran %d; proxies %+v %+v",
		callers*perCaller, failed.Load(), resends, lost, a.srv.Calls(), b.srv.Calls(), proxies[0].Stats(), proxies[1].Stats())
	for c := range callers {
		for i := range perCaller {
			req, method := fmt.Sprintf("c%d-%d", c, i), methods[(c+i)%3]
			if n := a.srv.Runs(method, req) + b.srv.Runs(method, req); n != 1 {
				t.Errorf("%s %s ran %d times across the replicas, want exactly 1", method, req, n)
			}
		}
	}
	if lost == 0 || resends == 0 {
		t.Fatalf("the faults did not happen: %d lost replies, %v resends relying on deduplication", lost, resends)
	}
}

// countSeries sums the values of every series named name that m collects.
func countSeries(t *testing.T, m *grpcguard.Metrics, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, s := range mf.GetMetric() {
				n += s.GetCounter().GetValue()
			}
		}
	}
	return n
}

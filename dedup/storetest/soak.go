package storetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/dedup"
	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// SoakConfig shapes Soak. The zero value is one replica whose
// deduplication the client learns from its responses.
type SoakConfig struct {
	// Replicas is the number of servers, behind round_robin, each
	// deduplicating with its own store from newStore: stores that share
	// their ids (one Redis), or a resend reaching another replica is
	// refused and the call fails. Default 1.
	Replicas int
	// Declared makes the client declare the servers' deduplication
	// (grpcguard.WithServerDedup) instead of learning it from their
	// responses, and resend without asking the dedup service first.
	Declared bool
	// Callers and PerCaller are the concurrent callers and the calls each
	// makes. Default 64 and 40.
	Callers, PerCaller int
}

// Soak is the soak driver shared by every store: Callers callers of one
// grpcguard.DialOptions client call idempotent (Get, Put) and
// non-idempotent (Echo) methods, each call with its own id, of Replicas
// servers running dedup.NewServer with stores from newStore. Each server is
// behind a fault proxy that, per connection, closes idle connections with
// FIN or RST, resets the first bytes after idle, loses the reply after the
// server ran the call, or passes, and that closes connections under calls
// in flight now and then. The client's own retry resends an Echo that may
// have run, with its id, relying on the servers' deduplication. Soak fails
// t unless no call fails, every request runs exactly once across the
// replicas, and replies were lost and resent.
func Soak(t *testing.T, newStore func(t *testing.T) dedup.Store, cfg SoakConfig) {
	t.Helper()
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Callers <= 0 {
		cfg.Callers = 64
	}
	if cfg.PerCaller <= 0 {
		cfg.PerCaller = 40
	}
	const idle = 100 * time.Millisecond
	modes := []faultproxy.Mode{faultproxy.FINAfterIdle, faultproxy.RSTAfterIdle, faultproxy.ResetFirstBytesAfterIdle,
		faultproxy.LostReply, faultproxy.Pass}
	var (
		servers []*testsvc.Server
		proxies []*faultproxy.Proxy
		addrs   []string
		direct  string // the first server, without its proxy
	)
	for i := range cfg.Replicas {
		srv := &testsvc.Server{}
		addr := serve(t, srv, dedup.NewServer(newStore(t)))
		p, err := faultproxy.Start(addr, faultproxy.Config{Choose: faultproxy.Random(uint64(0xded0+i), modes...), Idle: idle})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		servers, proxies, addrs = append(servers, srv), append(proxies, p), append(addrs, p.Addr())
		if i == 0 {
			direct = addr
		}
	}
	m := grpcguard.NewMetrics()
	// At most 5 attempts: the proxies fault four connections in five and
	// close one under the callers every 200-400ms, far denser than any
	// real path; with 3, a call now and then meets three faults in a row.
	// The budget is the default: every close fails many calls at once.
	opts := []grpcguard.Option{grpcguard.WithMetrics(m), grpcguard.WithMaxAttempts(5)}
	if cfg.Declared {
		opts = append(opts, grpcguard.WithServerDedup("/"+testsvc.Service+"/*"))
	}
	dopts, err := grpcguard.DialOptions(opts...)
	if err != nil {
		t.Fatal(err)
	}
	cc := testutil.RoundRobin(t, addrs, dopts...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A store's history may begin with its first claim (a Redis store
	// cannot tell a new Redis from one that lost its data), and a resend
	// of a call older than that is refused: a deployment's first call
	// makes it; here one before the callers start.
	warm := metadata.AppendToOutgoingContext(ctx, grpcguard.RequestIDHeader, "soak-warm-up")
	if _, err := testsvc.Call(warm, testutil.NewClient(t, direct), testsvc.Echo, "warm-up"); err != nil {
		t.Fatal(err)
	}
	methods := []string{testsvc.Get, testsvc.Put, testsvc.Echo}
	if !cfg.Declared {
		// The client learns, from its own responses, that the servers
		// deduplicate each method: it resends nothing on that account
		// before.
		for _, method := range methods {
			waitForAdvert(t, ctx, cc, method)
		}
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
				proxies[r.IntN(len(proxies))].CloseAll(r.IntN(2) == 0)
			}
		}
	}()
	var failed atomic.Int64
	var wg sync.WaitGroup
	for c := range cfg.Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 1))
			for i := range cfg.PerCaller {
				req, method := fmt.Sprintf("c%d-%d", c, i), methods[(c+i)%3]
				if out, err := testsvc.Call(ctx, cc, method, req); err != nil || out != req {
					failed.Add(1)
					why, _ := grpcguard.NotResentReason(err)
					t.Errorf("%s %s: %q, %v (not resent: %q)", method, req, out, err, why)
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

	var lost int64
	for _, p := range proxies {
		lost += p.Stats().LostReplies
	}
	resends := sumSeries(t, m, "grpcguard_retries_deduplicated_total")
	t.Logf("soak: %d calls, %d failed, %v resends relying on deduplication, %d lost replies, %d replicas",
		cfg.Callers*cfg.PerCaller, failed.Load(), resends, lost, cfg.Replicas)
	for c := range cfg.Callers {
		for i := range cfg.PerCaller {
			req, method := fmt.Sprintf("c%d-%d", c, i), methods[(c+i)%3]
			n := 0
			for _, srv := range servers {
				n += srv.Runs(method, req)
			}
			if n != 1 {
				t.Errorf("%s %s ran %d times across the replicas, want exactly 1", method, req, n)
			}
		}
	}
	if lost == 0 || resends == 0 {
		t.Fatalf("the faults did not happen: %d lost replies, %v resends relying on deduplication", lost, resends)
	}
}

// serve serves srv under sd's interceptor, with sd's dedup service, on a
// new 127.0.0.1 port until the test ends, and returns its address.
func serve(t *testing.T, srv *testsvc.Server, sd *dedup.Server) string {
	t.Helper()
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(sd.UnaryServerInterceptor()))
	srv.Register(gs)
	sd.RegisterService(gs)
	return testutil.ServeLoopback(t, gs)
}

// waitForAdvert calls method until a response advertises deduplication.
func waitForAdvert(t *testing.T, ctx context.Context, cc *grpc.ClientConn, method string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		var hdr metadata.MD
		_, err := testsvc.Call(ctx, cc, method, "warm-up", grpc.Header(&hdr))
		if err == nil && len(hdr.Get(grpcguard.DedupHeader)) == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no response advertised deduplication of %s within %v (last: %v)", method, bound, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// sumSeries sums the values of every series named name that m collects.
func sumSeries(t *testing.T, m prometheus.Collector, name string) float64 {
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

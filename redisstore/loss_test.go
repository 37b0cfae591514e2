package redisstore

import (
	"context"
	"fmt"
	gtestutil "github.com/grpcguard/grpcguard/internal/testutil"
	"strings"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func echoAs(name string) func(context.Context, string, string) (string, error) {
	return func(ctx context.Context, method, req string) (string, error) { return req + " ran on " + name, nil }
}

// TestRedisEvictedIDResendRefused (issue 18, item 4): Redis under
// maxmemory 4mb with volatile-lru evicts the outcome of a call (every claim
// and outcome has a TTL, so they are exactly what it evicts); the scope key
// survives. The resend of that id, a moment later, must be refused, not run
// again: the store sees that Redis evicted keys since it last looked.
func TestRedisEvictedIDResendRefused(t *testing.T) {
	r := startRedis(t)
	rdb := r.client(t)
	ctx := ctxTimeout(t, 30*time.Second)
	for _, kv := range [][2]string{{"maxmemory", "4mb"}, {"maxmemory-policy", "volatile-lru"}} {
		if err := rdb.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	a := startReplica(t, "A", r.store(t, Options{}), echoAs("A"))
	cc := gtestutil.NewClient(t, a.addr)
	start := time.Now()
	_, _, hdr, err := call(withID(ctx, "victim;advertise"), cc, testsvc.Echo, "pay")
	if err != nil {
		t.Fatal(err)
	}
	scope := scopeOf(t, hdr)
	// Other keys with a TTL fill Redis until it evicts the victim's.
	value := strings.Repeat("x", 10<<10)
	for i := 0; rdb.Exists(ctx, DefaultPrefix+"victim").Val() == 1; i++ {
		if i == 1000 {
			t.Fatal("Redis never evicted the victim's outcome")
		}
		pipe := rdb.Pipeline()
		for j := range 50 {
			pipe.Set(ctx, fmt.Sprintf("other:%d:%d", i, j), value, time.Hour)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	_, _, _, err = call(resend(withID(ctx, "victim"), scope, start), cc, testsvc.Echo, "pay")
	if n := a.srv.Runs(testsvc.Echo, "pay"); n != 1 {
		t.Fatalf("the call ran %d times, want 1 (resend: %v)", n, err)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("resend of an evicted id: %v, want FailedPrecondition", err)
	}
	// A call made after the eviction was seen is protected again: its lost
	// reply is answered from the store.
	start = time.Now()
	if _, _, _, err := call(withID(ctx, "later"), cc, testsvc.Echo, "later"); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := call(resend(withID(ctx, "later"), scope, start), cc, testsvc.Echo, "later"); err != nil {
		t.Fatalf("resend of a kept id: %v", err)
	}
}

// TestRedisRestartKeepsResendsGoing (issue 18, item 4): Redis restarts and
// loses what it held. A resend of an id from before is refused; but the
// replicas keep their scope, so a client that learned it goes on resending
// the calls made since (a lost reply is answered from the store) instead of
// taking the address for two stores and resending nothing for minutes.
func TestRedisRestartKeepsResendsGoing(t *testing.T) {
	r := startRedis(t)
	a := startReplica(t, "A", r.store(t, Options{}), echoAs("A"))
	// Connection 0 teaches the client; connection 1 loses the reply of its
	// first call.
	p, err := faultproxy.Start(a.addr, faultproxy.Config{Choose: func(n int) faultproxy.Mode {
		if n == 1 {
			return faultproxy.LostReply
		}
		return faultproxy.Pass
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	dopts, err := grpcguard.DialOptions()
	if err != nil {
		t.Fatal(err)
	}
	cc := gtestutil.NewClient(t, p.Addr(), dopts...)
	direct := gtestutil.NewClient(t, a.addr)
	ctx := ctxTimeout(t, 30*time.Second)

	var hdr metadata.MD
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "learn", grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	before := scopeOf(t, hdr)
	preStart := time.Now()
	if _, _, _, err := call(withID(ctx, "pre"), direct, testsvc.Echo, "pre"); err != nil {
		t.Fatal(err)
	}

	r.restart(t)

	// The id from before the restart is lost: its resend is refused.
	_, _, _, err = call(resend(withID(ctx, "pre"), before, preStart), direct, testsvc.Echo, "pre")
	if status.Code(err) != codes.FailedPrecondition || a.srv.Runs(testsvc.Echo, "pre") != 1 {
		t.Fatalf("resend of an id Redis lost: %v, ran %d times; want FailedPrecondition and 1", err, a.srv.Runs(testsvc.Echo, "pre"))
	}
	// The client hears the scope again (one call per method every 100ms
	// reads it).
	time.Sleep(150 * time.Millisecond)
	hdr = nil
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "relearn", grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	after := scopeOf(t, hdr)
	p.CloseAll(false) // the next call opens connection 1, which loses its reply
	deadline := time.Now().Add(5 * time.Second)
	for p.Open() != 0 || cc.GetState() == connectivity.Ready {
		if time.Now().After(deadline) {
			t.Fatal("the client did not see its connection closed")
		}
		time.Sleep(time.Millisecond)
	}
	reply, err := testsvc.Call(ctx, cc, testsvc.Echo, "pay")
	if p.Stats().LostReplies != 1 {
		t.Fatalf("the case did not arise: %+v (%q, %v)", p.Stats(), reply, err)
	}
	if err != nil || reply != "pay ran on A" || a.srv.Runs(testsvc.Echo, "pay") != 1 {
		t.Fatalf("lost reply after the restart: %q, %v, ran %d times; want the resend answered from the store", reply, err, a.srv.Runs(testsvc.Echo, "pay"))
	}
	if after != before {
		t.Fatalf("scope after the restart %q, before %q: want it kept", after, before)
	}
}

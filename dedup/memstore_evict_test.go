package dedup

import (
	"bytes"
	"context"
	"fmt"
	"github.com/grpcguard/grpcguard/internal/wire"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// keyInShard returns a key named after prefix that s puts in shard i.
func keyInShard(s *MemoryStore, prefix string, i, n int) string {
	for ; ; n++ {
		k := fmt.Sprintf("%s-%d", prefix, n)
		if sh, _ := s.shard(k); sh == &s.shards[i] {
			return k
		}
	}
}

// holds reports whether s holds key, running or finished.
func holds(s *MemoryStore, key string) bool {
	sh, h := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	_, ok := sh.index.get(h)
	return ok
}

// put stores an outcome of size bytes under key, as a call would.
func put(t testing.TB, s *MemoryStore, key string, size int) {
	t.Helper()
	ctx := context.Background()
	claim := newClaim(wire.Fingerprint{1})
	if existing, _, err := s.Claim(ctx, key, claim, DefaultTTL); err != nil || existing != nil {
		t.Fatalf("claim %s: %q, %v", key, existing, err)
	}
	if err := s.Finish(ctx, key, claim, bytes.Repeat([]byte{'O'}, size), DefaultTTL); err != nil {
		t.Fatalf("finish %s: %v", key, err)
	}
}

// TestDedupMemStoreEvictionInOneShardRefusesResend (issue 18, item 3): shard
// X drops a young outcome in a burst of large replies; shard Y then drops
// much older ones. The store must not advertise, nor judge a resend by, the
// older age: a resend of the id X dropped, a few tens of milliseconds old,
// is refused, and the call ran once. With one store-wide "last eviction"
// the retention jumped to Y's age and the resend ran again.
func TestDedupMemStoreEvictionInOneShardRefusesResend(t *testing.T) {
	m := NewMetrics()
	store, err := NewMemoryStore(MemoryStoreConfig{MaxBytes: 256 << 10, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	if len(store.shards) < 2 {
		t.Fatalf("%d shards: the case needs two", len(store.shards))
	}
	srv := &testsvc.Server{}
	cc := newClient(t, dedupServer(t, srv, store, nil, WithMetrics(m)))
	ctx := ctxTimeout(t, 20*time.Second)

	// Shard Y holds outcomes 300ms old.
	for i := range 40 {
		put(t, store, keyInShard(store, fmt.Sprint("y-old", i), 1, 0), 100)
	}
	time.Sleep(300 * time.Millisecond)

	// The victim runs; its outcome lands in shard X.
	victim := keyInShard(store, "victim", 0, 0)
	start := time.Now()
	if _, err := testsvc.Call(withRequestID(ctx, victim), cc, testsvc.Echo, "pay"); err != nil {
		t.Fatal(err)
	}
	// A burst of large replies in X drops it, young.
	for i := 0; holds(store, victim); i++ {
		if i == 10000 {
			t.Fatal("the burst never dropped the victim")
		}
		put(t, store, keyInShard(store, fmt.Sprint("x-burst", i), 0, 0), 2000)
	}
	// Y drops its old outcomes: just enough new ones to drop one segment.
	before := testutil.ToFloat64(m.evictions)
	for i := 0; testutil.ToFloat64(m.evictions) == before; i++ {
		if i == 10000 {
			t.Fatal("shard Y never dropped its old outcomes")
		}
		put(t, store, keyInShard(store, fmt.Sprint("y-new", i), 1, 0), 100)
	}
	time.Sleep(20 * time.Millisecond)
	age := time.Since(start)
	t.Logf("retention after the evictions %v; the victim's resend is %v old", store.Retention(DefaultTTL), age)

	_, err = testsvc.Call(withRequestID(ctx, victim+wire.ResendParams(store.Scope(), int64(age), "")), cc, testsvc.Echo, "pay")
	if n := srv.Runs(testsvc.Echo, "pay"); n != 1 {
		t.Fatalf("the call ran %d times, want 1 (resend: %v)", n, err)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("resend of an id dropped %v ago: %v, want FailedPrecondition", age, err)
	}
	if r := store.Retention(DefaultTTL); r > time.Since(start) {
		t.Fatalf("retention %v: longer than the age of an id dropped early", r)
	}
}

package dedup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/grpcguard/grpcguard/internal/wire"
	"runtime"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMemoryStoreFloodStaysWithinBounds: a flood of unique ids through the
// interceptor keeps the store within its byte and entry caps, drops the
// oldest outcomes (counted), advertises the shorter retention, and the heap
// does not grow with the flood.
func TestMemoryStoreFloodStaysWithinBounds(t *testing.T) {
	m := NewMetrics()
	const maxBytes = 128 << 10
	store, err := NewMemoryStore(MemoryStoreConfig{MaxBytes: maxBytes, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	srv := &testsvc.Server{}
	cc := newClient(t, dedupServer(t, srv, store, nil, WithMetrics(m)))
	ctx := ctxTimeout(t, 30*time.Second)
	const calls = 2000
	var before runtime.MemStats
	for i := range calls {
		if i == calls/2 {
			runtime.GC()
			runtime.ReadMemStats(&before)
		}
		id := fmt.Sprintf("flood-%06d", i)
		if _, err := testsvc.Call(withRequestID(ctx, id), cc, testsvc.Echo, id); err != nil {
			t.Fatal(err)
		}
		if st := store.Stats(); st.Bytes > maxBytes {
			t.Fatalf("after %d ids the store holds %d bytes, cap %d", i+1, st.Bytes, maxBytes)
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	st := store.Stats()
	ev := testutil.ToFloat64(m.evictions)
	t.Logf("%d unique ids: store %d entries, %d bytes (cap %d), %v evictions, retention %v, heap %d -> %d KiB",
		calls, st.Entries, st.Bytes, maxBytes, ev, store.Retention(DefaultTTL), before.HeapAlloc>>10, after.HeapAlloc>>10)
	if ev == 0 || int(ev)+st.Entries != calls {
		t.Fatalf("evictions %v + entries %d != %d ids", ev, st.Entries, calls)
	}
	if r := store.Retention(DefaultTTL); r >= DefaultTTL {
		t.Fatalf("retention %v after evictions, want less than the TTL", r)
	}
	if grow := int64(after.HeapAlloc) - int64(before.HeapAlloc); grow > 4*maxBytes {
		t.Fatalf("heap grew %d KiB over the second half of the flood", grow>>10)
	}
	// The most recent ids are still answered from the store.
	last := fmt.Sprintf("flood-%06d", calls-1)
	if _, err := testsvc.Call(withRequestID(ctx, last), cc, testsvc.Echo, last); err != nil || srv.Runs(testsvc.Echo, last) != 1 {
		t.Fatalf("latest id: %v, ran %d times", err, srv.Runs(testsvc.Echo, last))
	}
}

func TestMemoryStoreNeverDropsRunningClaims(t *testing.T) {
	store, err := NewMemoryStore(MemoryStoreConfig{MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	claim := func(key string) error {
		_, _, err := store.Claim(ctx, key, newClaim(wire.Fingerprint{}), time.Minute)
		return err
	}
	if err := claim("a"); err != nil {
		t.Fatal(err)
	}
	if err := claim("b"); err != nil {
		t.Fatal(err)
	}
	if err := claim("c"); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("third running claim in a 2-entry store: %v, want ErrStoreFull", err)
	}
	existing, _, _ := store.Claim(ctx, "a", nil, time.Minute)
	if err := store.Finish(ctx, "a", existing, []byte("outcome"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := claim("c"); err != nil {
		t.Fatalf("with a finished outcome to drop: %v", err)
	}
	if st := store.Stats(); st.Entries != 2 {
		t.Fatalf("entries = %d, want 2", st.Entries)
	}
}

func TestMemoryStoreInvalidConfig(t *testing.T) {
	for _, c := range []struct {
		cfg  MemoryStoreConfig
		want string
	}{
		{MemoryStoreConfig{MaxBytes: -1}, "grpcguard: invalid option: MemoryStoreConfig.MaxBytes(-1): must not be negative"},
		{MemoryStoreConfig{MaxEntries: -1}, "grpcguard: invalid option: MemoryStoreConfig.MaxEntries(-1): must not be negative"},
	} {
		if _, err := NewMemoryStore(c.cfg); err == nil || err.Error() != c.want || !errors.Is(err, ErrInvalidOption) {
			t.Fatalf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
}

// newClaim returns a claim record for fp with a fresh token.
func newClaim(fp wire.Fingerprint) []byte {
	b := make([]byte, wire.ClaimLen)
	wire.FillClaim(b, fp)
	return b
}

// TestMemoryStoreSegments: outcomes of every size read back whole, also
// one larger than a segment and after their segments filled; an outcome
// larger than the store fails with ErrStoreFull and leaves the claim; whole
// segments are dropped oldest first, each early drop counted, and the
// retention is the time since the youngest one dropped had finished.
func TestMemoryStoreSegments(t *testing.T) {
	m := NewMetrics()
	store, err := NewMemoryStore(MemoryStoreConfig{MaxBytes: 64 << 10, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	if len(store.shards) != 1 || store.shards[0].segSize != 4<<10 {
		t.Fatalf("%d shards with segments of %d bytes, want 1 of 4 KiB", len(store.shards), store.shards[0].segSize)
	}
	ctx := context.Background()
	put := func(key string, outcome []byte) error {
		c := newClaim(wire.Fingerprint{})
		if existing, _, err := store.Claim(ctx, key, c, time.Minute); err != nil || existing != nil {
			t.Fatalf("claim %s: %q, %v", key, existing, err)
		}
		return store.Finish(ctx, key, c, outcome, time.Minute)
	}
	get := func(key string) []byte {
		c := newClaim(wire.Fingerprint{})
		existing, _, err := store.Claim(ctx, key, c, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if existing == nil {
			_ = store.Release(ctx, key, c) // not held: drop the claim just made
		}
		return existing
	}
	outcome := func(i, n int) []byte {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i + j)
		}
		return b
	}
	sizes := []int{0, 1, 100, 3000, 5000, 20000} // 5000 and 20000: larger than a segment
	for i, n := range sizes {
		if err := put(fmt.Sprint("k", i), outcome(i, n)); err != nil {
			t.Fatalf("outcome of %d bytes: %v", n, err)
		}
	}
	for i, n := range sizes {
		if got := get(fmt.Sprint("k", i)); !bytes.Equal(got, outcome(i, n)) {
			t.Fatalf("outcome %d of %d bytes read back as %d bytes", i, n, len(got))
		}
	}
	if ev := testutil.ToFloat64(m.evictions); ev != 0 {
		t.Fatalf("%v evictions before the store was full", ev)
	}
	c := newClaim(wire.Fingerprint{})
	store.Claim(ctx, "huge", c, time.Minute)
	if err := store.Finish(ctx, "huge", c, make([]byte, 65<<10), time.Minute); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("outcome larger than the store: %v, want ErrStoreFull", err)
	}
	if err := store.Finish(ctx, "huge", c, []byte("small"), time.Minute); err != nil {
		t.Fatalf("the claim was not left in place: %v", err)
	}
	// Fill with small outcomes: the oldest segments go first.
	for i := range 2000 {
		if err := put(fmt.Sprint("f", i), outcome(i, 40)); err != nil {
			t.Fatal(err)
		}
		if st := store.Stats(); st.Bytes > 64<<10 {
			t.Fatalf("%d bytes held, cap %d", st.Bytes, 64<<10)
		}
	}
	st := store.Stats()
	ev := int(testutil.ToFloat64(m.evictions))
	if ev+st.Entries != len(sizes)+1+2000 {
		t.Fatalf("%d evictions + %d entries != %d ids", ev, st.Entries, len(sizes)+1+2000)
	}
	if get("k0") != nil || !bytes.Equal(get("f1999"), outcome(1999, 40)) {
		t.Fatal("want the oldest dropped and the newest kept")
	}
	if r := store.Retention(time.Minute); r >= time.Minute {
		t.Fatalf("retention %v after early drops", r)
	}
}

// TestMemoryStoreExpiredNotCounted: outcomes dropped after their TTL are
// not evictions and do not shorten the retention.
func TestMemoryStoreExpiredNotCounted(t *testing.T) {
	m := NewMetrics()
	store, _ := NewMemoryStore(MemoryStoreConfig{MaxBytes: 16 << 10, Metrics: m})
	ctx := context.Background()
	for i := range 400 {
		c := newClaim(wire.Fingerprint{})
		key := fmt.Sprint("e", i)
		store.Claim(ctx, key, c, time.Millisecond)
		if err := store.Finish(ctx, key, c, make([]byte, 40), time.Millisecond); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Microsecond)
		if i%100 == 99 {
			time.Sleep(2 * time.Millisecond) // everything so far expires
		}
	}
	if ev := testutil.ToFloat64(m.evictions); ev != 0 {
		t.Fatalf("%v expired outcomes counted as evictions", ev)
	}
	if r := store.Retention(time.Minute); r != time.Minute {
		t.Fatalf("retention %v, want the TTL", r)
	}
}

// TestMemoryStoreHashCollision: another key with the same 64-bit hash (made
// here by hand: it takes about 2^32 keys to find one) never reads the
// first key's value: a running claim fails the new claim closed, an outcome
// is dropped as an early eviction.
func TestMemoryStoreHashCollision(t *testing.T) {
	m := NewMetrics()
	store, _ := NewMemoryStore(MemoryStoreConfig{Metrics: m})
	ctx := context.Background()
	sh, h := store.shard("a")
	b := "b"
	for i := 0; ; i++ { // a key of the same shard
		if shb, _ := store.shard(b); shb == sh {
			break
		}
		b = fmt.Sprint("b", i)
	}
	alias := func() {
		sh.mu.Lock()
		defer sh.mu.Unlock()
		_, hb := store.shard(b)
		v, _ := sh.index.get(h)
		sh.index.put(hb, v)
	}
	c := newClaim(wire.Fingerprint{1})
	store.Claim(ctx, "a", c, time.Minute)
	alias()
	if existing, _, err := store.Claim(ctx, b, newClaim(wire.Fingerprint{2}), time.Minute); existing != nil || !errors.Is(err, errHashCollision) {
		t.Fatalf("claim colliding with a running one: %q, %v; want the collision error", existing, err)
	}
	if err := store.Finish(ctx, "a", c, []byte("a's reply"), time.Minute); err != nil {
		t.Fatal(err)
	}
	alias()
	if existing, _, err := store.Claim(ctx, b, newClaim(wire.Fingerprint{2}), time.Minute); existing != nil || err != nil {
		t.Fatalf("claim colliding with an outcome: %q, %v; want a new claim", existing, err)
	}
	if ev := testutil.ToFloat64(m.evictions); ev != 1 || store.Retention(time.Minute) >= time.Minute {
		t.Fatalf("evictions %v, retention %v: the dropped outcome must count", ev, store.Retention(time.Minute))
	}
}

// TestMemoryStoreSequenceWraps: segment numbers in the index wrap after
// 2^31 segments of a shard (days of a busy server with a small store);
// outcomes are found and dropped across the wrap as before it.
func TestMemoryStoreSequenceWraps(t *testing.T) {
	m := NewMetrics()
	store, _ := NewMemoryStore(MemoryStoreConfig{MaxBytes: 16 << 10, Metrics: m})
	store.shards[0].first = seqMask - 3 // four segments before the wrap
	ctx := context.Background()
	for i := range 400 {
		c := newClaim(wire.Fingerprint{})
		key := fmt.Sprint("w", i)
		store.Claim(ctx, key, c, time.Minute)
		if err := store.Finish(ctx, key, c, []byte(key), time.Minute); err != nil {
			t.Fatal(err)
		}
		for _, back := range []int{0, 5, 20} { // recent outcomes read back
			if j := i - back; j >= 0 {
				k := fmt.Sprint("w", j)
				got, _, err := store.Claim(ctx, k, newClaim(wire.Fingerprint{}), time.Minute)
				if err != nil || (got != nil && string(got) != k) || (got == nil && back == 0) {
					t.Fatalf("after %d outcomes, %s read back as %q, %v", i+1, k, got, err)
				}
				if got == nil {
					t.Fatalf("after %d outcomes, %s (%d back) is gone", i+1, k, back)
				}
			}
		}
	}
	if sh := &store.shards[0]; sh.first <= seqMask {
		t.Fatalf("first segment %d: the test did not cross the wrap", sh.first)
	}
	if ev := int(testutil.ToFloat64(m.evictions)); ev+store.Stats().Entries != 400 {
		t.Fatalf("%d evictions + %d entries != 400 ids", ev, store.Stats().Entries)
	}
}

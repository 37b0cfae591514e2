package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestMemoryStoreFloodStaysWithinBounds: a flood of unique ids through the
// interceptor keeps the store within its byte and entry caps, drops the
// oldest outcomes (counted), advertises the shorter retention, and the heap
// does not grow with the flood.
func TestMemoryStoreFloodStaysWithinBounds(t *testing.T) {
	m := NewDedupMetrics()
	const maxBytes = 128 << 10
	store, err := NewMemoryStore(MemoryStoreConfig{MaxBytes: maxBytes, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	srv := &testsvc.Server{}
	cc := newClient(t, dedupServer(t, srv, store, nil, WithDedupMetrics(m)))
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
		calls, st.Entries, st.Bytes, maxBytes, ev, store.Retention(DefaultDedupTTL), before.HeapAlloc>>10, after.HeapAlloc>>10)
	if ev == 0 || int(ev)+st.Entries != calls {
		t.Fatalf("evictions %v + entries %d != %d ids", ev, st.Entries, calls)
	}
	if r := store.Retention(DefaultDedupTTL); r >= DefaultDedupTTL {
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
		_, _, err := store.Claim(ctx, key, newClaim(fingerprint{}), time.Minute)
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

func TestMemoryStoreExpiryAndClaimFencing(t *testing.T) {
	store, err := NewMemoryStore(MemoryStoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c1 := newClaim(fingerprint{1})
	if _, _, err := store.Claim(ctx, "k", c1, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "the claim to expire", func() bool {
		existing, _, _ := store.Claim(ctx, "k", newClaim(fingerprint{2}), time.Minute)
		return existing == nil
	})
	// The first owner's claim expired and another took its place: its
	// outcome must not overwrite the new claim.
	if err := store.Finish(ctx, "k", c1, []byte("late"), time.Minute); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("Finish of an expired claim: %v, want ErrClaimLost", err)
	}
	if err := store.Release(ctx, "k", c1); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("Release of an expired claim: %v, want ErrClaimLost", err)
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

func TestDedupRecordRoundTrip(t *testing.T) {
	fp := fingerprint{7}
	b, err := encodeOutcome(fp, storedOutcome{reply: wrapperspb.String("abc"),
		header: map[string][]string{"a": {"1", "2"}}, trailer: map[string][]string{"b": {"3"}}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decodeRecord(b)
	if err != nil || !rec.done || rec.fp != fp {
		t.Fatalf("decode: %+v, %v", rec, err)
	}
	o, err := rec.outcome()
	if err != nil || string(o.replyBytes) != "\x0a\x03abc" || len(o.header["a"]) != 2 || o.trailer["b"][0] != "3" {
		t.Fatalf("outcome: %+v, %v", o, err)
	}
	for i := range b {
		if r, err := decodeRecord(b[:i]); err == nil {
			if _, err := r.outcome(); err == nil {
				t.Fatalf("truncated record of %d bytes decoded", i)
			}
		}
	}
}

// newClaim returns a claim record for fp with a fresh token.
func newClaim(fp fingerprint) []byte {
	b := make([]byte, claimLen)
	fillClaim(b, fp)
	return b
}

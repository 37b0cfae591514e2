package grpcguard

import (
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
)

// TestDedupStatusReportsWhatTheClientLearned (issue 18, item 6): a
// DedupStatus shows nothing before the first response, then the method the
// server advertised and the replica's scope and retention; a server without
// deduplication teaches nothing.
func TestDedupStatusReportsWhatTheClientLearned(t *testing.T) {
	store, _ := NewMemoryStore(MemoryStoreConfig{})
	addr := dedupServer(t, &testsvc.Server{}, store, nil, WithDedupTTL(time.Minute))
	st := NewDedupStatus()
	cc := bundleClient(t, addr, WithDedupStatus(st))
	if m := st.Method(testsvc.Echo); m.Learned || len(m.Replicas) != 0 {
		t.Fatalf("before any call: %+v", m)
	}
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "x"); err != nil {
		t.Fatal(err)
	}
	m := st.Method(testsvc.Echo)
	if !m.Learned || m.LastAdvertised.IsZero() || len(m.Replicas) != 1 {
		t.Fatalf("after a call: %+v", m)
	}
	if r := m.Replicas[0]; r.Addr != addr || r.Scope != store.Scope() || r.Retention != time.Minute || !r.MixedUntil.IsZero() {
		t.Fatalf("replica %+v: want %s, scope %s, 1m", r, addr, store.Scope())
	}
	if st.Method(testsvc.Get).Learned {
		t.Fatal("a method never called is reported learned")
	}

	plain := NewDedupStatus()
	pc := bundleClient(t, startServer(t, &testsvc.Server{}), WithDedupStatus(plain))
	if _, err := testsvc.Call(ctx, pc, testsvc.Echo, "x"); err != nil {
		t.Fatal(err)
	}
	if m := plain.Method(testsvc.Echo); m.Learned || len(m.Replicas) != 0 || m.DeniedUntil.IsZero() {
		t.Fatalf("a server without dedup: %+v; want not learned, denied", m)
	}
	if _, err := DialOptions(WithDedupStatus(nil)); err == nil {
		t.Fatal("WithDedupStatus(nil) accepted")
	}
}

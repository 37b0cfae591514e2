package grpcguard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
)

// Every name that moved to package dedup still compiles under its old name,
// with its old signature, for one minor release (issue 19).
var (
	_ Store             = (*MemoryStore)(nil)
	_ RetentionChecker  = nil
	_ *ServerDedup      = (*dedup.Server)(nil)
	_ DedupOption       = dedup.Option{}
	_ *DedupMetrics     = (*dedup.Metrics)(nil)
	_ MemoryStoreConfig = dedup.MemoryStoreConfig{}
	_ MemoryStoreStats  = dedup.MemoryStoreStats{}

	_ func(Store, ...DedupOption) grpc.UnaryServerInterceptor         = UnaryServerDedup
	_ func(Store, ...DedupOption) *ServerDedup                        = NewServerDedup
	_ func(error) error                                               = NotExecuted
	_ func(time.Duration) DedupOption                                 = WithDedupTTL
	_ func(...string) DedupOption                                     = WithDedupIDField
	_ func(func(context.Context, string) (string, error)) DedupOption = WithDedupKey
	_ func() DedupOption                                              = WithDedupFailOpen
	_ func(*DedupMetrics) DedupOption                                 = WithDedupMetrics
	_ func(...MetricsOption) *DedupMetrics                            = NewDedupMetrics
	_ func(MemoryStoreConfig) (*MemoryStore, error)                   = NewMemoryStore
)

func TestDeprecatedDedupNames(t *testing.T) {
	if DefaultDedupTTL != dedup.DefaultTTL || DefaultMemoryStoreMaxBytes != dedup.DefaultMemoryStoreMaxBytes ||
		DefaultMemoryStoreMaxEntries != dedup.DefaultMemoryStoreMaxEntries || DedupLookupMethod != dedup.LookupMethod {
		t.Fatal("a deprecated constant differs from its dedup name")
	}
	if RequestIDHeader != dedup.RequestIDHeader || DedupHeader != dedup.AdvertHeader || DedupReplayedHeader != dedup.ReplayedHeader {
		t.Fatal("the client's header names differ from the server's")
	}
	// The same error values: errors.Is matches across the alias, both ways.
	for _, c := range []struct{ old, moved error }{{ErrClaimLost, dedup.ErrClaimLost}, {ErrStoreFull, dedup.ErrStoreFull}} {
		wrapped := fmt.Errorf("store: %w", c.moved)
		if c.old != c.moved || !errors.Is(wrapped, c.old) || !errors.Is(fmt.Errorf("store: %w", c.old), c.moved) {
			t.Fatalf("%v: errors.Is does not match across the alias", c.old)
		}
	}
	store, err := NewMemoryStore(MemoryStoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	claim := []byte("claim")
	if _, _, err := store.Claim(ctx, "k", claim, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := store.Release(ctx, "k", []byte("other")); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("Release of another claim: %v, want ErrClaimLost", err)
	}
	// NewMemoryStore's error still matches the root's ErrInvalidOption.
	if _, err := NewMemoryStore(MemoryStoreConfig{MaxBytes: -1}); !errors.Is(err, ErrInvalidOption) || !errors.Is(err, dedup.ErrInvalidOption) ||
		!strings.Contains(err.Error(), "MemoryStoreConfig.MaxBytes(-1)") {
		t.Fatalf("invalid config: %v, want ErrInvalidOption naming the field", err)
	}
	// NewDedupMetrics takes the root's MetricsOption.
	m := NewDedupMetrics(WithConstLabels(prometheus.Labels{"server": "a"}))
	srv := &testsvc.Server{}
	cc := newClient(t, startServer(t, srv, grpc.ChainUnaryInterceptor(
		UnaryServerDedup(store, WithDedupMetrics(m), WithDedupTTL(time.Minute), WithDedupFailOpen(),
			WithDedupIDField("request_id"), WithDedupKey(func(_ context.Context, id string) (string, error) { return "c/" + id, nil })))))
	call := withRequestID(ctxTimeout(t, 5*time.Second), "old-names")
	for range 2 {
		if _, err := testsvc.Call(call, cc, testsvc.Echo, "x"); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.Runs(testsvc.Echo, "x"); n != 1 {
		t.Fatalf("ran %d times under the old names, want 1", n)
	}
	want := `
# HELP grpcguard_dedup_answered_total Duplicate calls answered from a stored outcome without running.
# TYPE grpcguard_dedup_answered_total counter
grpcguard_dedup_answered_total{server="a"} 1
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "grpcguard_dedup_answered_total"); err != nil {
		t.Fatal(err)
	}
	if NotExecuted(nil) != nil || !errors.Is(NotExecuted(ErrClaimLost), ErrClaimLost) {
		t.Fatal("NotExecuted")
	}
}

package grpcguard

import (
	"context"
	"time"

	"github.com/grpcguard/grpcguard/dedup"
	"google.golang.org/grpc"
)

// The server half of request-id deduplication moved to package dedup
// (issue 19). These names stay, as aliases of the new ones, for one minor
// release: the same types and the same error values, so that errors.Is
// keeps matching. The client never uses them.

// Store is dedup.Store.
//
// Deprecated: use dedup.Store. Kept for one minor release.
type Store = dedup.Store

// RetentionChecker is dedup.RetentionChecker.
//
// Deprecated: use dedup.RetentionChecker. Kept for one minor release.
type RetentionChecker = dedup.RetentionChecker

// ServerDedup is dedup.Server.
//
// Deprecated: use dedup.Server. Kept for one minor release.
type ServerDedup = dedup.Server

// DedupOption is dedup.Option.
//
// Deprecated: use dedup.Option. Kept for one minor release.
type DedupOption = dedup.Option

// DedupMetrics is dedup.Metrics.
//
// Deprecated: use dedup.Metrics. Kept for one minor release.
type DedupMetrics = dedup.Metrics

// MemoryStore is dedup.MemoryStore.
//
// Deprecated: use dedup.MemoryStore. Kept for one minor release.
type MemoryStore = dedup.MemoryStore

// MemoryStoreConfig is dedup.MemoryStoreConfig.
//
// Deprecated: use dedup.MemoryStoreConfig. Kept for one minor release.
type MemoryStoreConfig = dedup.MemoryStoreConfig

// MemoryStoreStats is dedup.MemoryStoreStats.
//
// Deprecated: use dedup.MemoryStoreStats. Kept for one minor release.
type MemoryStoreStats = dedup.MemoryStoreStats

// DefaultDedupTTL is dedup.DefaultTTL.
//
// Deprecated: use dedup.DefaultTTL. Kept for one minor release.
const DefaultDedupTTL = dedup.DefaultTTL

// DefaultMemoryStoreMaxBytes is dedup.DefaultMemoryStoreMaxBytes.
//
// Deprecated: use dedup.DefaultMemoryStoreMaxBytes. Kept for one minor release.
const DefaultMemoryStoreMaxBytes = dedup.DefaultMemoryStoreMaxBytes

// DefaultMemoryStoreMaxEntries is dedup.DefaultMemoryStoreMaxEntries.
//
// Deprecated: use dedup.DefaultMemoryStoreMaxEntries. Kept for one minor release.
const DefaultMemoryStoreMaxEntries = dedup.DefaultMemoryStoreMaxEntries

// DedupLookupMethod is dedup.LookupMethod.
//
// Deprecated: use dedup.LookupMethod. Kept for one minor release.
const DedupLookupMethod = dedup.LookupMethod

// ErrClaimLost is dedup.ErrClaimLost, the same value.
//
// Deprecated: use dedup.ErrClaimLost. Kept for one minor release.
var ErrClaimLost = dedup.ErrClaimLost

// ErrStoreFull is dedup.ErrStoreFull, the same value.
//
// Deprecated: use dedup.ErrStoreFull. Kept for one minor release.
var ErrStoreFull = dedup.ErrStoreFull

// UnaryServerDedup is dedup.UnaryServerInterceptor.
//
// Deprecated: use dedup.UnaryServerInterceptor. Kept for one minor release.
func UnaryServerDedup(store Store, opts ...DedupOption) grpc.UnaryServerInterceptor {
	return dedup.UnaryServerInterceptor(store, opts...)
}

// NewServerDedup is dedup.NewServer.
//
// Deprecated: use dedup.NewServer. Kept for one minor release.
func NewServerDedup(store Store, opts ...DedupOption) *ServerDedup {
	return dedup.NewServer(store, opts...)
}

// NotExecuted is dedup.NotExecuted.
//
// Deprecated: use dedup.NotExecuted. Kept for one minor release.
func NotExecuted(err error) error { return dedup.NotExecuted(err) }

// WithDedupTTL is dedup.WithTTL.
//
// Deprecated: use dedup.WithTTL. Kept for one minor release.
func WithDedupTTL(d time.Duration) DedupOption { return dedup.WithTTL(d) }

// WithDedupIDField is dedup.WithIDField.
//
// Deprecated: use dedup.WithIDField. Kept for one minor release.
func WithDedupIDField(names ...string) DedupOption { return dedup.WithIDField(names...) }

// WithDedupKey is dedup.WithKey.
//
// Deprecated: use dedup.WithKey. Kept for one minor release.
func WithDedupKey(f func(ctx context.Context, id string) (string, error)) DedupOption {
	return dedup.WithKey(f)
}

// WithDedupFailOpen is dedup.WithFailOpen.
//
// Deprecated: use dedup.WithFailOpen. Kept for one minor release.
func WithDedupFailOpen() DedupOption { return dedup.WithFailOpen() }

// WithDedupMetrics is dedup.WithMetrics.
//
// Deprecated: use dedup.WithMetrics. Kept for one minor release.
func WithDedupMetrics(m *DedupMetrics) DedupOption { return dedup.WithMetrics(m) }

// NewDedupMetrics is dedup.NewMetrics; WithConstLabels applies as
// dedup.WithConstLabels.
//
// Deprecated: use dedup.NewMetrics. Kept for one minor release.
func NewDedupMetrics(opts ...MetricsOption) *DedupMetrics {
	var mc metricsConfig
	for _, o := range opts {
		if o.apply != nil {
			o.apply(&mc)
		}
	}
	return dedup.NewMetrics(dedup.WithConstLabels(mc.constLabels))
}

// NewMemoryStore is dedup.NewMemoryStore. Its error matches both
// ErrInvalidOption, as it did, and dedup.ErrInvalidOption.
//
// Deprecated: use dedup.NewMemoryStore. Kept for one minor release.
func NewMemoryStore(cfg MemoryStoreConfig) (*MemoryStore, error) {
	s, err := dedup.NewMemoryStore(cfg)
	if err != nil {
		return nil, invalidStoreConfig{err}
	}
	return s, nil
}

// invalidStoreConfig is dedup.NewMemoryStore's error, which also matches
// the root's ErrInvalidOption.
type invalidStoreConfig struct{ error }

func (e invalidStoreConfig) Unwrap() error        { return e.error }
func (e invalidStoreConfig) Is(target error) bool { return target == ErrInvalidOption }

package dedup_test

import (
	"testing"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/grpcguard/grpcguard/dedup/storetest"
)

func newMemoryStore(t *testing.T) dedup.Store {
	s, err := dedup.NewMemoryStore(dedup.MemoryStoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestMemoryStoreConformance: MemoryStore keeps the Store contract.
func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, newMemoryStore)
}

// TestMemoryStoreSoakEveryIDRunsOnce: one replica with a MemoryStore, whose
// deduplication the client learns, under the shared soak driver: every
// request runs exactly once, with lost replies resent.
func TestMemoryStoreSoakEveryIDRunsOnce(t *testing.T) {
	storetest.Soak(t, newMemoryStore, storetest.SoakConfig{PerCaller: 60})
}

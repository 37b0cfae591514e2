package redisstore

import (
	"testing"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/grpcguard/grpcguard/dedup/storetest"
)

// TestReplicasSoakEveryIDRunsOnce: two replicas sharing one Redis behind
// round_robin, under the soak driver every store shares (storetest.Soak):
// the client's retry resends a failed Echo with its id (the servers' shared
// store is declared with grpcguard.WithServerDedup) to whichever replica
// round_robin picks; no call fails, and every request runs exactly once
// across the replicas.
func TestReplicasSoakEveryIDRunsOnce(t *testing.T) {
	r := startRedis(t)
	storetest.Soak(t, func(t *testing.T) dedup.Store { return r.store(t, Options{}) },
		storetest.SoakConfig{Replicas: 2, Declared: true})
}

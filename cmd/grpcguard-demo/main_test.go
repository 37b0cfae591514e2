package main

import (
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

// TestScenariosKeepTheirPromise runs every scenario small and checks what
// the demo's exit status promises for the grpcguard rows.
func TestScenariosKeepTheirPromise(t *testing.T) {
	defer goleak.VerifyNone(t)
	reg := prometheus.NewRegistry()
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			m := grpcguard.NewMetrics(grpcguard.WithConstLabels(prometheus.Labels{"scenario": s.name}))
			reg.MustRegister(m)
			rows, err := runScenario(s, 8, 40*time.Millisecond, 1, m, reg)
			if err != nil {
				t.Fatal(err)
			}
			plain, guarded := rows[0], rows[1]
			t.Logf("plain %+v", plain)
			t.Logf("grpcguard %+v", guarded)
			if !keptPromise(s, plain, guarded) {
				t.Fatalf("grpcguard broke the demo's promise: %+v (plain %+v)", guarded, plain)
			}
			if !s.tail && guarded.stale == 0 {
				t.Fatal("grpcguard counted no stale connection: the faults did not happen")
			}
		})
	}
}

//go:build linux

package main

import (
	"strings"
	"testing"

	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

// TestMiddleboxRows runs the real-middlebox scenarios small (4 calls per
// client) and checks that their rows reach the table and keep the promise.
func TestMiddleboxRows(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode: builds network namespaces and takes seconds")
	}
	if err := netns.Check("nft", "haproxy"); err != nil {
		t.Skipf("skipped: %v", err)
	}
	defer goleak.VerifyNone(t)
	var out strings.Builder
	ok, ran := runMiddleboxes(&out, "all", 4, 1, prometheus.NewRegistry())
	t.Logf("\n%s", out.String())
	if !ok {
		t.Error("a grpcguard row broke its promise")
	}
	if ran != 3 {
		t.Errorf("%d scenarios ran, want 3", ran)
	}
	for _, name := range []string{"conntrack (netns)", "haproxy-fin (netns)", "haproxy-rst (netns)"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("no row for %s", name)
		}
	}
	if strings.Contains(out.String(), "could not run") || strings.Contains(out.String(), "skipped") {
		t.Error("a scenario did not run")
	}
}

package opentelemetry_test

import (
	"context"
	"testing"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpcguard/grpcguard"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// TestOrderPrometheusProvider: go-grpc-middleware's Prometheus client
// metrics are interceptors only: given before grpcguard's options they count
// the logical call once, after them each of its attempts.
func TestOrderPrometheusProvider(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before bool
		want   float64
	}{
		{"before grpcguard: calls", true, 1},
		{"after grpcguard: attempts", false, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cm := grpcprom.NewClientMetrics()
			reg := prometheus.NewRegistry()
			reg.MustRegister(cm)
			prom := []grpc.DialOption{grpc.WithChainUnaryInterceptor(cm.UnaryClientInterceptor())}
			front, after := prom, []grpc.DialOption(nil)
			if !tc.before {
				front, after = nil, prom
			}
			cc := newClient(t, startServer(t, &healthServer{failFirst: 2}), front, after, grpcguard.WithIdempotentMethods(check))
			if err := callCheck(t, context.Background(), cc); err != nil {
				t.Fatal(err)
			}
			if got := sumOf(t, reg, "grpc_client_started_total"); got != tc.want {
				t.Errorf("grpc_client_started_total = %v, want %v", got, tc.want)
			}
		})
	}
}

// sumOf returns the sum of the counter name's series in reg.
func sumOf(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

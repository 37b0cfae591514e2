package testutil

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetricValueByNameAndLabels(t *testing.T) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"a", "b"})
	empty := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "y_total", Help: "y"}, []string{"a"})
	reg := NewRegistry(t, c, empty)
	c.WithLabelValues("1", "p").Add(2)
	c.WithLabelValues("1", "q").Add(3)
	c.WithLabelValues("2", "p").Add(5)
	for _, tc := range []struct {
		labels map[string]string
		want   float64
	}{
		{nil, 10},
		{map[string]string{"a": "1"}, 5},
		{map[string]string{"a": "1", "b": "p"}, 2},
		{map[string]string{"b": "p"}, 7},
		{map[string]string{"a": "3"}, 0},
		{map[string]string{"c": "1"}, 0},
	} {
		if got := MetricValue(t, reg, "x_total", tc.labels); got != tc.want {
			t.Errorf("x_total%v = %v, want %v", tc.labels, got, tc.want)
		}
	}
	// A family with no series yet is known to the registry: 0, no failure.
	if got := MetricValue(t, reg, "y_total", nil); got != 0 {
		t.Errorf("y_total = %v, want 0", got)
	}
	if !reg.names["x_total"] || !reg.names["y_total"] || reg.names["z_total"] {
		t.Errorf("registry knows %v, want x_total and y_total", reg.names)
	}
}

// Package testutil holds what grpcguard's tests share between the root
// package and the end-to-end tests in test/: reading the public metrics by
// name, as a user's dashboard does, instead of the collector's fields.
package testutil

import (
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// MetricValue returns the sum over the series of the metric family name in
// g whose labels include every pair of labels (nil: every series): a
// counter's or a gauge's value, a histogram's sample count. A family with no
// series yet (a labelled counter nothing has incremented) reads as 0; a name
// g does not describe at all fails t, so that a misspelt name cannot read as
// a zero.
func MetricValue(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	sum := 0.0
	for _, s := range series(t, g, name) {
		if !hasLabels(s, labels) {
			continue
		}
		switch {
		case s.GetCounter() != nil:
			sum += s.GetCounter().GetValue()
		case s.GetGauge() != nil:
			sum += s.GetGauge().GetValue()
		case s.GetHistogram() != nil:
			sum += float64(s.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// Histogram returns the one series of the histogram family name in g.
func Histogram(t testing.TB, g prometheus.Gatherer, name string) *dto.Histogram {
	t.Helper()
	ss := series(t, g, name)
	if len(ss) != 1 || ss[0].GetHistogram() == nil {
		t.Fatalf("%s: %d series, want one histogram", name, len(ss))
	}
	return ss[0].GetHistogram()
}

// series gathers g and returns the series of the family name; it fails t
// when g cannot be gathered or does not know the name.
func series(t testing.TB, g prometheus.Gatherer, name string) []*dto.Metric {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	if r, ok := g.(*Registry); ok && !r.names[name] {
		t.Fatalf("no metric family %q", name)
	}
	return nil
}

// Registry is a prometheus.Registry that knows the names of the families
// its collectors describe, so that MetricValue can tell a misspelt name from
// a family with no series yet.
type Registry struct {
	*prometheus.Registry
	names map[string]bool
}

// fqName reads a family's name from prometheus.Desc.String, the only place
// a Desc shows it.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// NewRegistry returns a new registry with cs registered on it.
func NewRegistry(t testing.TB, cs ...prometheus.Collector) *Registry {
	t.Helper()
	r := &Registry{Registry: prometheus.NewPedanticRegistry(), names: map[string]bool{}}
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			t.Fatalf("register metrics: %v", err)
		}
		ch := make(chan *prometheus.Desc)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if m := fqName.FindStringSubmatch(d.String()); m != nil {
				r.names[m[1]] = true
			}
		}
	}
	return r
}

// hasLabels reports whether s carries every pair of labels.
func hasLabels(s *dto.Metric, labels map[string]string) bool {
	found := 0
	for _, lp := range s.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(labels)
}

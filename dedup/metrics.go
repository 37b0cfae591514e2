package dedup

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what UnaryServerInterceptor and MemoryStore do, on the
// server. It is a prometheus.Collector: register it on your own registry. A
// nil *Metrics counts nothing. It is separate from grpcguard.Metrics, which
// counts what a client sees, because the two usually live in different
// processes.
//
// Series:
//
//	grpcguard_dedup_executions_total     calls run under a new claim
//	grpcguard_dedup_answered_total       duplicates answered from a stored outcome
//	grpcguard_dedup_waited_total         duplicates that arrived while their id ran, and waited
//	grpcguard_dedup_conflicts_total      an id reused with a different request, refused
//	grpcguard_dedup_refused_total        resends refused: another store's scope, or older than the retention
//	grpcguard_dedup_released_total       claims released by NotExecuted, or by a panic
//	grpcguard_dedup_evictions_total      outcomes dropped by MemoryStore before their TTL
//	grpcguard_dedup_store_errors_total{op}   op: claim, wait, finish, release
type Metrics struct {
	executions, answered, waited, conflicts, refused, released, evictions prometheus.Counter
	storeErrors                                                           *prometheus.CounterVec
	storeErrBy                                                            [numStoreOps]prometheus.Counter
}

type storeOp int

const (
	opClaim storeOp = iota
	opWait
	opFinish
	opRelease
	numStoreOps
)

func (o storeOp) String() string {
	return [...]string{StoreOpClaim, StoreOpWait, StoreOpFinish, StoreOpRelease}[o]
}

// MetricsOption configures NewMetrics.
type MetricsOption struct {
	apply func(*metricsConfig)
}

type metricsConfig struct {
	constLabels prometheus.Labels
}

// WithConstLabels adds labels to every series, for example to tell apart the
// servers of one process that share a registry. Default none.
func WithConstLabels(labels prometheus.Labels) MetricsOption {
	return MetricsOption{apply: func(c *metricsConfig) { c.constLabels = labels }}
}

// NewMetrics returns a collector of the dedup series. Register it with
// prometheus.Registerer.Register or MustRegister, and pass it with
// WithMetrics (and MemoryStoreConfig.Metrics).
func NewMetrics(opts ...MetricsOption) *Metrics {
	var mc metricsConfig
	for _, o := range opts {
		if o.apply != nil {
			o.apply(&mc)
		}
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "grpcguard", Subsystem: "dedup", Name: name, Help: help, ConstLabels: mc.constLabels,
		})
	}
	m := &Metrics{
		executions: counter("executions_total", "Calls with a request id run under a new claim."),
		answered:   counter("answered_total", "Duplicate calls answered from a stored outcome without running."),
		waited:     counter("waited_total", "Duplicate calls that arrived while their id was running and waited for its outcome."),
		conflicts:  counter("conflicts_total", "Calls refused because their request id was used with a different request."),
		refused:    counter("refused_total", "Resends refused because the first attempt may have run under another store scope, or longer ago than the store keeps ids."),
		released:   counter("released_total", "Claims released without an outcome (NotExecuted, or a panic), so that a resend runs again."),
		evictions:  counter("evictions_total", "Outcomes dropped by the memory store before their TTL to stay within its bounds."),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "grpcguard", Subsystem: "dedup", Name: "store_errors_total",
			Help: "Dedup store operations that failed, by operation.", ConstLabels: mc.constLabels,
		}, []string{"op"}),
	}
	for o := storeOp(0); o < numStoreOps; o++ {
		m.storeErrBy[o] = m.storeErrors.WithLabelValues(o.String())
	}
	return m
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.executions, m.answered, m.waited, m.conflicts, m.refused, m.released, m.evictions, m.storeErrors}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *Metrics) inc(c func(*Metrics) prometheus.Counter) {
	if m != nil {
		c(m).Inc()
	}
}

func (m *Metrics) executed() {
	m.inc(func(m *Metrics) prometheus.Counter { return m.executions })
}
func (m *Metrics) answer() {
	m.inc(func(m *Metrics) prometheus.Counter { return m.answered })
}
func (m *Metrics) wait() { m.inc(func(m *Metrics) prometheus.Counter { return m.waited }) }
func (m *Metrics) conflict() {
	m.inc(func(m *Metrics) prometheus.Counter { return m.conflicts })
}
func (m *Metrics) refuse() { m.inc(func(m *Metrics) prometheus.Counter { return m.refused }) }
func (m *Metrics) release() {
	m.inc(func(m *Metrics) prometheus.Counter { return m.released })
}
func (m *Metrics) evicted() {
	m.inc(func(m *Metrics) prometheus.Counter { return m.evictions })
}
func (m *Metrics) storeErr(o storeOp) {
	if m != nil {
		m.storeErrBy[o].Inc()
	}
}

package grpcguard

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// Metrics counts what grpcguard sees and does. It is a prometheus.Collector:
// register it on your own registry. A nil *Metrics counts nothing, so code
// paths never check whether metrics are configured.
//
// Series:
//
//	grpcguard_stale_connections_total{reason}   reason: peer_closed, reset, error
//	grpcguard_probes_total{result}              result: alive, stale
//	grpcguard_dials_total{result}               result: ok, error
//	grpcguard_connections_open
//	grpcguard_connections_unprobed_total
//	grpcguard_stale_connection_idle_seconds     histogram: idle age at death
//	grpcguard_idle_horizon_seconds              learned or set; 0: nothing is retired
//	grpcguard_keepalive_seconds                 the TCP keepalive idle the Dialer uses now
//	grpcguard_connections_retired_total{reason} reason: learned, max_idle
//	grpcguard_verifications_total{result}       result: alive, stale, unanswered, known_alive
//	grpcguard_verification_duration_seconds     histogram
//	grpcguard_retries_total{grpc_service,grpc_method,grpc_code}
//	grpcguard_retries_throttled_total{grpc_service,grpc_method}
//	grpcguard_retries_unprocessed_total{grpc_service,grpc_method}
//	grpcguard_retries_deduplicated_total{grpc_service,grpc_method}
//	grpcguard_hedges_total{grpc_service,grpc_method}
//	grpcguard_hedge_wins_total{grpc_service,grpc_method}
//	grpcguard_hedges_throttled_total{grpc_service,grpc_method}
//	grpcguard_hedge_delay_seconds{grpc_service,grpc_method}
//
// The method labels name a method only when the client knows it (gRFC A66):
// the call carries grpc.StaticMethod(), the method's descriptor is in the
// global protobuf registry, or it is named in WithIdempotentMethods or the
// service config. Any other name is recorded as grpc_service="other",
// grpc_method="other", so names chosen by a client's callers cannot grow
// the number of series.
type Metrics struct {
	stale            *prometheus.CounterVec
	probes           *prometheus.CounterVec
	dials            *prometheus.CounterVec
	open             prometheus.Gauge
	retries          *prometheus.CounterVec
	retryThrottled   *prometheus.CounterVec
	retryUnprocessed *prometheus.CounterVec
	retryDedup       *prometheus.CounterVec
	hedges           *prometheus.CounterVec
	hedgeWins        *prometheus.CounterVec
	hedgeThrottled   *prometheus.CounterVec
	hedgeDelay       *prometheus.GaugeVec
	staleIdleAge     prometheus.Histogram
	horizon          prometheus.Gauge
	retiredConns     *prometheus.CounterVec
	keepAlive        prometheus.Gauge
	verifications    *prometheus.CounterVec
	verifyWait       prometheus.Histogram
	unprobed         prometheus.Counter

	// Children resolved once: the per-write and per-probe paths must not hash
	// label values.
	staleBy    [numStaleReasons]prometheus.Counter
	probeAlive prometheus.Counter
	probeStale prometheus.Counter
	dialOK     prometheus.Counter
	dialErr    prometheus.Counter
	verifyBy   [numVerifyResults]prometheus.Counter
	retiredBy  [2]prometheus.Counter // learned, max_idle
}

// MetricsOption configures NewMetrics. It follows the pattern of Option,
// one opaque type per scope, and is a scope of its own: it configures the
// collector, which one or several clients report to (through WithMetrics),
// not a client, so it is neither an Option nor a grpc.CallOption. The zero
// MetricsOption does nothing.
type MetricsOption struct {
	apply func(*metricsConfig)
}

type metricsConfig struct {
	constLabels prometheus.Labels
}

// WithConstLabels adds labels to every series, for example to tell apart the
// clients of one process that share a registry. Default none.
func WithConstLabels(labels prometheus.Labels) MetricsOption {
	return MetricsOption{apply: func(c *metricsConfig) { c.constLabels = labels }}
}

// NewMetrics returns a collector of every grpcguard series. Register it with
// prometheus.Registerer.Register or MustRegister.
func NewMetrics(opts ...MetricsOption) *Metrics {
	var mc metricsConfig
	for _, o := range opts {
		if o.apply != nil {
			o.apply(&mc)
		}
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "grpcguard", Name: name, Help: help, ConstLabels: mc.constLabels,
		}, labels)
	}
	method := []string{"grpc_service", "grpc_method"}
	m := &Metrics{
		stale: counter("stale_connections_total",
			"Connections found closed or broken by the peer: by a probe, a refused write, or the reader.", "reason"),
		probes: counter("probes_total", "Socket probes of idle connections, by result.", "result"),
		dials:  counter("dials_total", "Connections dialed, by result.", "result"),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "grpcguard", Name: "connections_open", Help: "Connections made by grpcguard dialers and not yet closed.",
			ConstLabels: mc.constLabels,
		}),
		retries: counter("retries_total",
			"Retries sent, by the status code of the attempt being retried.", append(method, "grpc_code")...),
		retryThrottled:   counter("retries_throttled_total", "Retries refused because the retry budget was exhausted.", method...),
		retryUnprocessed: counter("retries_unprocessed_total", "Retries allowed because the failed attempt provably never left the client.", method...),
		retryDedup:       counter("retries_deduplicated_total", "Retries of non-idempotent calls that may have reached the server, allowed because the server deduplicates their request id.", method...),
		hedges:           counter("hedges_total", "Hedged attempts sent (beyond the original).", method...),
		hedgeWins:        counter("hedge_wins_total", "Calls won by a hedged attempt rather than the original.", method...),
		hedgeThrottled:   counter("hedges_throttled_total", "Hedged attempts not sent because the hedge budget was exhausted.", method...),
		hedgeDelay: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "grpcguard", Name: "hedge_delay_seconds", Help: "Current adaptive hedging delay per method.",
			ConstLabels: mc.constLabels,
		}, method),
		staleIdleAge: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "grpcguard", Name: "stale_connection_idle_seconds",
			Help:        "How long connections had been idle when they were found dead: the idle timeout of what is on the path.",
			ConstLabels: mc.constLabels,
			Buckets:     []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600},
		}),
		horizon: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "grpcguard", Name: "idle_horizon_seconds",
			Help:        "Idle age at which connections die, learned from deaths or set with WithMaxIdle; conns are retired before it.",
			ConstLabels: mc.constLabels,
		}),
		retiredConns: counter("connections_retired_total",
			"Idle connections that carried no RPC, closed before use because they outlived the idle horizon, by how the horizon was set.", "reason"),
		keepAlive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "grpcguard", Name: "keepalive_seconds",
			Help:        "The TCP keepalive idle the Dialer's connections use now: WithKeepAlive's, or shorter after a middlebox forgot an idle flow.",
			ConstLabels: mc.constLabels,
		}),
		verifications: counter("verifications_total", "Path checks (keepalive round trips) before the first write after idle, by result.", "result"),
		verifyWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "grpcguard", Name: "verification_duration_seconds",
			Help:        "How long path checks waited for the answer.",
			ConstLabels: mc.constLabels,
			Buckets:     []float64{0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256},
		}),
		unprobed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "grpcguard", Name: "connections_unprobed_total",
			Help:        "Connections from a dial function that do not expose their socket (no syscall.Conn): never probed or checked before use.",
			ConstLabels: mc.constLabels,
		}),
	}
	for r := verifyResult(0); r < numVerifyResults; r++ {
		m.verifyBy[r] = m.verifications.WithLabelValues(r.String())
	}
	for r := StaleReason(0); r < numStaleReasons; r++ {
		m.staleBy[r] = m.stale.WithLabelValues(r.String())
	}
	m.retiredBy[0] = m.retiredConns.WithLabelValues("learned")
	m.retiredBy[1] = m.retiredConns.WithLabelValues("max_idle")
	m.probeAlive = m.probes.WithLabelValues("alive")
	m.probeStale = m.probes.WithLabelValues("stale")
	m.dialOK = m.dials.WithLabelValues("ok")
	m.dialErr = m.dials.WithLabelValues("error")
	return m
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.stale, m.probes, m.dials, m.open, m.retries, m.retryThrottled,
		m.retryUnprocessed, m.retryDedup, m.hedges, m.hedgeWins, m.hedgeThrottled, m.hedgeDelay,
		m.staleIdleAge, m.horizon, m.retiredConns, m.keepAlive, m.verifications, m.verifyWait, m.unprobed}
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

func (m *Metrics) staleConn(r StaleReason) {
	if m != nil {
		m.staleBy[r].Inc()
	}
}

func (m *Metrics) probed(stale bool) {
	if m == nil {
		return
	}
	if stale {
		m.probeStale.Inc()
	} else {
		m.probeAlive.Inc()
	}
}

func (m *Metrics) dialed(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.dialErr.Inc()
		return
	}
	m.dialOK.Inc()
	m.open.Inc()
}

func (m *Metrics) unprobedConn() {
	if m != nil {
		m.unprobed.Inc()
	}
}

func (m *Metrics) connClosed() {
	if m != nil {
		m.open.Dec()
	}
}

func (m *Metrics) retried(mi *methodInfo, code codes.Code, unprocessed bool) {
	if m == nil {
		return
	}
	m.retries.WithLabelValues(mi.service, mi.method, code.String()).Inc()
	if unprocessed {
		m.retryUnprocessed.WithLabelValues(mi.service, mi.method).Inc()
	}
}

func (m *Metrics) retriedDeduplicated(mi *methodInfo) {
	if m != nil {
		m.retryDedup.WithLabelValues(mi.service, mi.method).Inc()
	}
}

func (m *Metrics) retryThrottledFor(mi *methodInfo) {
	if m != nil {
		m.retryThrottled.WithLabelValues(mi.service, mi.method).Inc()
	}
}

func (m *Metrics) hedged(mi *methodInfo) {
	if m != nil {
		m.hedges.WithLabelValues(mi.service, mi.method).Inc()
	}
}

func (m *Metrics) hedgeWon(mi *methodInfo) {
	if m != nil {
		m.hedgeWins.WithLabelValues(mi.service, mi.method).Inc()
	}
}

func (m *Metrics) hedgeThrottledFor(mi *methodInfo) {
	if m != nil {
		m.hedgeThrottled.WithLabelValues(mi.service, mi.method).Inc()
	}
}

func (m *Metrics) hedgeDelaySet(mi *methodInfo, seconds float64) {
	if m != nil {
		m.hedgeDelay.WithLabelValues(mi.service, mi.method).Set(seconds)
	}
}

func (m *Metrics) staleIdle(age time.Duration) {
	if m != nil {
		m.staleIdleAge.Observe(age.Seconds())
	}
}

func (m *Metrics) horizonSet(d time.Duration) {
	if m != nil {
		m.horizon.Set(d.Seconds())
	}
}

func (m *Metrics) retired(fixed bool) {
	if m == nil {
		return
	}
	if fixed {
		m.retiredBy[1].Inc()
	} else {
		m.retiredBy[0].Inc()
	}
}

func (m *Metrics) keepAliveSet(d time.Duration) {
	if m != nil {
		m.keepAlive.Set(d.Seconds())
	}
}

func (m *Metrics) verified(r verifyResult, wait time.Duration) {
	if m == nil {
		return
	}
	m.verifyBy[r].Inc()
	if r != verifyKnownAlive {
		m.verifyWait.Observe(wait.Seconds())
	}
}

package opentelemetry

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/grpcguard/grpcguard"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Instrument names. The grpc. ones are gRFC A96's and A94's.
const (
	callRetriesName    = "grpc.client.call.retries"
	callHedgesName     = "grpc.client.call.hedges"
	callRetryDelayName = "grpc.client.call.retry_delay"
	disconnectionsName = "grpc.subchannel.disconnections"
	notResentName      = "grpcguard.client.call.not_resent"
	staleName          = "grpcguard.client.connection.stale"
	staleIdleName      = "grpcguard.client.connection.stale_idle"
	retiredName        = "grpcguard.client.connection.retired"
	horizonName        = "grpcguard.client.idle_horizon"
	keepAliveName      = "grpcguard.client.keepalive"
	dialErrorsName     = "grpcguard.client.dial_errors"
)

// Attribute keys. grpc.method, grpc.target and grpc.disconnect_error are
// gRFC A66's and A94's.
const (
	methodKey          = attribute.Key("grpc.method")
	targetKey          = attribute.Key("grpc.target")
	disconnectErrorKey = attribute.Key("grpc.disconnect_error")
	reasonKey          = attribute.Key("grpcguard.reason")
	staleReasonKey     = attribute.Key("grpcguard.stale_reason")
	retiredAtKey       = attribute.Key("grpcguard.retired_at")
	viaProxyKey        = attribute.Key("grpcguard.via_proxy")
)

// countBounds are A96's recommended buckets for retries and hedges per call.
var countBounds = []float64{1, 2, 3, 4, 5}

// latencyBounds are gRFC A66's latency buckets, in seconds, for
// retry_delay and the idle age of stale connections.
var latencyBounds = []float64{0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 2, 5, 10, 20, 50, 100}

// disconnectError maps a grpcguard.StaleReason to gRFC A94's
// grpc.disconnect_error as grpc-go labels the socket error behind it: a
// reset is "connection reset"; a FIN reaches grpc-go as an EOF, which it
// labels "unknown"; any other socket error is "socket error".
func disconnectError(r grpcguard.StaleReason) string {
	switch r {
	case grpcguard.Reset:
		return "connection reset"
	case grpcguard.PeerClosed:
		return "unknown"
	default:
		return "socket error"
	}
}

// staleReasons are the reasons a connection is found stale, in their order.
var staleReasons = [...]grpcguard.StaleReason{grpcguard.PeerClosed, grpcguard.Reset, grpcguard.SocketError}

// metrics holds the instruments of one Hooks and the attribute sets it
// records with, made once: a set per method label (bounded: grpcguard labels
// unknown methods "other") and per stale reason.
type metrics struct {
	target []attribute.KeyValue // grpc.target, or nothing

	retries, hedges                           metric.Int64Histogram
	retryDelay, staleIdle                     metric.Float64Histogram
	notResent, disconnections, stale, retired metric.Int64Counter
	dialErrors                                metric.Int64Counter
	horizon, keepAlive                        metric.Float64Gauge
	onTarget                                  metric.MeasurementOption
	staleBy, disconnectBy                     [len(staleReasons)]metric.MeasurementOption
	retiredLearned, retiredAtMaxIdle          metric.MeasurementOption
	dialDirect, dialViaProxy                  metric.MeasurementOption

	byMethod       sync.Map // MethodLabel → metric.MeasurementOption
	byMethodReason sync.Map // methodReason → metric.MeasurementOption
}

type methodReason struct{ method, reason string }

func newMetrics(mp metric.MeterProvider, target string) (*metrics, error) {
	meter := mp.Meter(ScopeName)
	m := &metrics{}
	if target != "" {
		m.target = []attribute.KeyValue{targetKey.String(target)}
	}
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	m.retries, err = meter.Int64Histogram(callRetriesName, metric.WithUnit("{retry}"),
		metric.WithDescription("Number of retries during the client call. If there were no retries, 0 is not reported."),
		metric.WithExplicitBucketBoundaries(countBounds...))
	note(err)
	m.hedges, err = meter.Int64Histogram(callHedgesName, metric.WithUnit("{hedge}"),
		metric.WithDescription("Number of hedges during the client call. If there were no hedges, 0 is not reported."),
		metric.WithExplicitBucketBoundaries(countBounds...))
	note(err)
	m.retryDelay, err = meter.Float64Histogram(callRetryDelayName, metric.WithUnit("s"),
		metric.WithDescription("Total time of delay while there is no active attempt during the client call."),
		metric.WithExplicitBucketBoundaries(latencyBounds...))
	note(err)
	m.notResent, err = meter.Int64Counter(notResentName, metric.WithUnit("{call}"),
		metric.WithDescription("Failed attempts the call would resend that grpcguard did not send again, by why."))
	note(err)
	m.disconnections, err = meter.Int64Counter(disconnectionsName, metric.WithUnit("{disconnection}"),
		metric.WithDescription("Number of times a connection of grpcguard's Dialer was found disconnected."))
	note(err)
	m.stale, err = meter.Int64Counter(staleName, metric.WithUnit("{connection}"),
		metric.WithDescription("Connections grpcguard's Dialer found stale, by how."))
	note(err)
	m.staleIdle, err = meter.Float64Histogram(staleIdleName, metric.WithUnit("s"),
		metric.WithDescription("How long connections had been idle when they were found stale: the idle timeout of what is on the path."),
		metric.WithExplicitBucketBoundaries(latencyBounds...))
	note(err)
	m.retired, err = meter.Int64Counter(retiredName, metric.WithUnit("{connection}"),
		metric.WithDescription("Idle connections grpcguard's Dialer closed before the path could, at the learned idle horizon or at WithMaxIdle."))
	note(err)
	m.horizon, err = meter.Float64Gauge(horizonName, metric.WithUnit("s"),
		metric.WithDescription("Idle age at which connections carrying nothing are retired; 0: never."))
	note(err)
	m.keepAlive, err = meter.Float64Gauge(keepAliveName, metric.WithUnit("s"),
		metric.WithDescription("The TCP keepalive idle the Dialer's connections use now."))
	note(err)
	m.dialErrors, err = meter.Int64Counter(dialErrorsName, metric.WithUnit("{dial}"),
		metric.WithDescription("Connections grpcguard's Dialer could not open."))
	note(err)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	m.onTarget = metric.WithAttributes(m.target...)
	for i, r := range staleReasons {
		m.staleBy[i] = m.with(staleReasonKey.String(r.String()))
		m.disconnectBy[i] = m.with(disconnectErrorKey.String(disconnectError(r)))
	}
	m.retiredLearned = m.with(retiredAtKey.String("learned"))
	m.retiredAtMaxIdle = m.with(retiredAtKey.String("max_idle"))
	m.dialDirect = m.with(viaProxyKey.Bool(false))
	m.dialViaProxy = m.with(viaProxyKey.Bool(true))
	return m, nil
}

// with returns the attribute set of kv and the target, as an option.
func (m *metrics) with(kv ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(append(kv, m.target...)...))
}

// method returns the attributes of a call of the method labelled label.
func (m *metrics) method(label string) metric.MeasurementOption {
	if o, ok := m.byMethod.Load(label); ok {
		return o.(metric.MeasurementOption)
	}
	o, _ := m.byMethod.LoadOrStore(label, m.with(methodKey.String(a66Method(label))))
	return o.(metric.MeasurementOption)
}

// methodReason returns the attributes of a call of the method labelled label
// that was not resent for reason.
func (m *metrics) methodReason(label, reason string) metric.MeasurementOption {
	k := methodReason{label, reason}
	if o, ok := m.byMethodReason.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	o, _ := m.byMethodReason.LoadOrStore(k, m.with(methodKey.String(a66Method(label)), reasonKey.String(reason)))
	return o.(metric.MeasurementOption)
}

// a66Method is grpcguard's method label as A66's grpc.method: the full
// method without its leading slash, or "other".
func a66Method(label string) string { return strings.TrimPrefix(label, "/") }

// staleIndex is r's place in staleReasons; an unknown reason counts as a
// socket error, as StaleReason.String calls it "error".
func staleIndex(r grpcguard.StaleReason) int {
	for i, s := range staleReasons {
		if s == r {
			return i
		}
	}
	return len(staleReasons) - 1
}

// hooks returns the metric hooks.
func (m *metrics) hooks() grpcguard.Hooks {
	return grpcguard.Hooks{
		OnCallEnd:     m.callEnd,
		OnNotResent:   m.notResentCall,
		OnStaleConn:   m.staleConn,
		OnConnRetired: m.connRetired,
		OnIdleHorizon: m.idleHorizon,
		OnDialError:   m.dialError,
	}
}

// callEnd records A96's per-call values. Counts of 0 are not reported
// (A96); the delay is reported for calls that sent more than one attempt,
// as grpc-core does, since a call of one attempt never waited for another.
func (m *metrics) callEnd(ctx context.Context, e grpcguard.CallEndEvent) {
	if e.Attempts <= 1 {
		return
	}
	attrs := m.method(e.MethodLabel)
	if e.Retries > 0 {
		m.retries.Record(ctx, int64(e.Retries), attrs)
	}
	if e.Hedges > 0 {
		m.hedges.Record(ctx, int64(e.Hedges), attrs)
	}
	m.retryDelay.Record(ctx, e.RetryDelay.Seconds(), attrs)
}

func (m *metrics) notResentCall(ctx context.Context, e grpcguard.NotResentEvent) {
	m.notResent.Add(ctx, 1, m.methodReason(e.MethodLabel, e.Reason))
}

func (m *metrics) staleConn(e grpcguard.StaleConnEvent) {
	ctx := context.Background() // a connection's events belong to no call
	i := staleIndex(e.Reason)
	m.disconnections.Add(ctx, 1, m.disconnectBy[i])
	m.stale.Add(ctx, 1, m.staleBy[i])
	m.staleIdle.Record(ctx, e.Idle.Seconds(), m.onTarget)
}

func (m *metrics) connRetired(e grpcguard.ConnRetiredEvent) {
	at := m.retiredAtMaxIdle
	if e.Learned {
		at = m.retiredLearned
	}
	m.retired.Add(context.Background(), 1, at)
}

func (m *metrics) idleHorizon(e grpcguard.IdleHorizonEvent) {
	ctx := context.Background()
	m.horizon.Record(ctx, e.Horizon.Seconds(), m.onTarget)
	m.keepAlive.Record(ctx, e.KeepAlive.Seconds(), m.onTarget)
}

func (m *metrics) dialError(e grpcguard.DialErrorEvent) {
	via := m.dialDirect
	if e.Proxy != "" {
		via = m.dialViaProxy
	}
	m.dialErrors.Add(context.Background(), 1, via)
}

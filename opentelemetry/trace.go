package opentelemetry

import (
	"context"

	"github.com/grpcguard/grpcguard"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"
)

// Event names and attribute keys of the trace events. previous-rpc-attempts
// is gRFC A72's attribute of an attempt.
const (
	attemptEvent  = "grpcguard.attempt"
	decisionEvent = "grpcguard.decision"

	attemptKey     = attribute.Key("grpcguard.attempt")
	hedgeKey       = attribute.Key("grpcguard.hedge")
	previousKey    = attribute.Key("previous-rpc-attempts")
	decisionKey    = attribute.Key("grpcguard.decision")
	waitKey        = attribute.Key("grpcguard.wait")
	hedgeDelayKey  = attribute.Key("grpcguard.hedge_delay")
	statusCodeKey  = attribute.Key("grpc.status_code")
	decisionResent = "resent"
	decisionNot    = "not resent"
	decisionHedged = "hedged"
)

// traceHooks returns the hooks that add a call's attempts and decisions to
// the span of its context, when that span is recording.
func traceHooks() grpcguard.Hooks {
	return grpcguard.Hooks{
		OnAttempt: func(ctx context.Context, e grpcguard.AttemptEvent) {
			if span := trace.SpanFromContext(ctx); span.IsRecording() {
				span.AddEvent(attemptEvent, trace.WithAttributes(
					attemptKey.Int(e.Attempt), hedgeKey.Bool(e.Hedge), previousKey.Int(e.Attempt-1)))
			}
		},
		OnRetry: func(ctx context.Context, e grpcguard.RetryEvent) {
			if span := trace.SpanFromContext(ctx); span.IsRecording() {
				span.AddEvent(decisionEvent, trace.WithAttributes(
					attemptKey.Int(e.Attempt), decisionKey.String(decisionResent), reasonKey.String(e.Reason),
					waitKey.Float64(e.Wait.Seconds()), statusCodeKey.String(status.Code(e.Err).String())))
			}
		},
		OnNotResent: func(ctx context.Context, e grpcguard.NotResentEvent) {
			if span := trace.SpanFromContext(ctx); span.IsRecording() {
				span.AddEvent(decisionEvent, trace.WithAttributes(
					attemptKey.Int(e.Attempt), decisionKey.String(decisionNot), reasonKey.String(e.Reason),
					statusCodeKey.String(status.Code(e.Err).String())))
			}
		},
		OnHedge: func(ctx context.Context, e grpcguard.HedgeEvent) {
			if span := trace.SpanFromContext(ctx); span.IsRecording() {
				span.AddEvent(decisionEvent, trace.WithAttributes(
					attemptKey.Int(e.Attempt), decisionKey.String(decisionHedged),
					hedgeDelayKey.Float64(e.Delay.Seconds())))
			}
		},
	}
}

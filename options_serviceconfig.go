package grpcguard

import (
	"fmt"

	"github.com/grpcguard/grpcguard/internal/serviceconfig"
)

// WithServiceConfig applies a gRFC A6 service config, given as the JSON that
// grpc.WithDefaultServiceConfig takes, to the retry and hedging interceptors.
//
// Honoured, per methodConfig entry: retryPolicy (maxAttempts, initialBackoff,
// maxBackoff, backoffMultiplier, retryableStatusCodes, perAttemptRecvTimeout), hedgingPolicy
// (maxAttempts, hedgingDelay, nonFatalStatusCodes) and timeout; and the
// top-level retryThrottling (maxTokens, tokenRatio), which replaces the retry
// budget as WithRetryThrottling does, except that tokenRatio has no upper
// bound, as in grpc-go. Everything else (loadBalancingConfig, waitForReady,
// message size limits, unknown fields) is validated as grpc-go validates it and
// otherwise ignored: those belong to the ClientConn. Like grpc-go, a config
// without methodConfig is accepted whatever its retryThrottling values; out of
// range ones are then ignored.
//
// A call uses the methodConfig whose name matches it best: {service, method}
// over {service} over the default {} (grpc-go's precedence). A matched
// retryPolicy overrides, for that method only, the options' maximum attempts,
// backoff (including WithBackoffFunc) and retryable codes, declares the method
// safe to retry whatever its idempotency (as a retryPolicy does in grpc-go),
// and turns hedging off for it; like grpc-go, such a call or stream is not
// retried once the server's response headers have arrived. Its backoff is
// gRFC A6's as amended (grpc-go#7514, as grpc-go computes it): before retry n,
// min(initialBackoff*backoffMultiplier^(n-1), maxBackoff) times a factor drawn
// uniformly from [0.8, 1.2), so a wait may exceed maxBackoff by 20% (the
// options' WithBackoff draws from [0, cap] instead: full jitter).
//
// perAttemptRecvTimeout, which grpc-go v1.85 ignores and grpc-core and
// grpc-java implement, becomes the method's per-attempt timeout, with
// WithPerAttemptTimeout's meaning: each attempt is bounded from its start, and
// an attempt that runs out of it is resent after the backoff whatever the
// retryable codes (within maxAttempts, the budget and the caller's deadline);
// the last one's DeadlineExceeded is returned. That is grpc-core's behaviour,
// with two differences: grpc-core returns CANCELLED, and it stops the timer
// once response headers or a message arrive, where grpcguard stops it when a
// stream receives its first message, or a unary call its response. The second
// matters only for a server that sends headers early (grpc.SendHeader) and
// answers later: grpcguard ends that attempt at the timeout, and does not
// resend it, for headers commit the call. Without the field the options'
// WithPerAttemptTimeout stays; a call's own one overrides it.
//
// A matched hedgingPolicy enables hedging for the method with a fixed delay
// ("0s" or absent: all attempts at once), its non-fatal codes (absent: none) and
// attempt count, declares the method safe to run more than once, and turns
// retrying off for it. maxAttempts above 5 count as 5. A matched timeout
// bounds the whole call, hedged or not (an earlier caller deadline wins; "0s"
// fails every call, a negative timeout is ignored, as in grpc-go). A method no
// entry matches, or whose entry has neither policy, keeps the options' retry
// and hedging behaviour. The policies apply where the interceptors run:
// DialOptions hedges and retries every method; a call's own CallOptions
// (WithMaxAttempts, WithRetryDisabled, WithHedgingDisabled, ...) still
// override them for that call.
//
// The config is accepted or rejected exactly as grpc-go v1.85 accepts or
// rejects it, with two additions, fields grpc-go ignores: hedgingPolicy is
// validated by gRFC A6 (maxAttempts greater than 1, hedgingDelay not
// negative, no OK among nonFatalStatusCodes, not together with a retryPolicy
// in one methodConfig), and perAttemptRecvTimeout as grpc-core validates it
// (a duration greater than 0). An invalid config is an error wrapping
// ErrInvalidOption that names the offending field, for example
// "methodConfig[0].retryPolicy.maxAttempts". The last WithServiceConfig wins.
func WithServiceConfig(json string) ClientOption {
	parsed, err := serviceconfig.Parse(json)
	if err != nil {
		err = fmt.Errorf("%w: WithServiceConfig: %w", ErrInvalidOption, err)
	}
	return clientOption(func(c *config) error {
		if err != nil {
			return err
		}
		c.serviceConfig = nil
		if len(parsed.Methods) > 0 {
			c.serviceConfig = (*serviceConfig)(parsed)
		}
		if t := parsed.Throttling; t != nil {
			c.budget = budgetConfig{maxTokens: t.MaxTokens, tokenRatio: t.TokenRatio}
		}
		return nil
	})
}

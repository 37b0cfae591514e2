package dedup

import (
	"context"
	"log/slog"
)

// WithLogger logs to l what an operator of the server must know. It is
// built on Hooks: it installs a hook that logs, beside any set with
// WithHooks. nil logs nothing; without WithLogger the package logs nothing.
// Several WithLogger add up: each logger gets every record. Records carry
// the keys method, op and error.
//
//	Level  Record
//	Warn   a Store operation failed: the call failed with Unavailable
//	       (claim, wait), or its outcome is not kept and a resend waits for
//	       the claim to expire (finish), or a released claim stays until
//	       it expires (release)
//	Warn   the claim failed under WithFailOpen: the call runs without
//	       deduplication, and a resend of it may run it again
//
// Outcomes (executed, answered, ...) are not logged: they are per call and
// normal; count them with Metrics, or see them with WithHooks.
func WithLogger(l *slog.Logger) Option {
	return Option{func(c *config) error {
		if l != nil {
			c.hooks = c.hooks.join(Hooks{OnStoreError: func(ctx context.Context, e StoreErrorEvent) {
				msg := "grpcguard: dedup store failed"
				if e.FailOpen {
					msg = "grpcguard: dedup store failed: running the call without deduplication (fail open)"
				}
				l.LogAttrs(ctx, slog.LevelWarn, msg,
					slog.String("method", e.Method), slog.String("op", e.Op), slog.Any("error", e.Err))
			}})
		}
		return nil
	}}
}

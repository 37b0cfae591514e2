package grpcguard

import (
	"context"
	"errors"
	"log/slog"
	"net"
)

// WithLogger logs what grpcguard does to l, at the levels below. It is built
// on Hooks: it installs hooks that log, beside any set with WithHooks. nil
// logs nothing and installs nothing; without WithLogger grpcguard logs
// nothing. Several WithLogger add up, as WithHooks do: each logger gets
// every record. Records carry the keys method, peer, attempt, error and
// reason where they apply.
//
//	Level  Record
//	Warn   a failed call not sent again because it may have run and is not
//	       idempotent (reason MAY_HAVE_RUN), or because the server's
//	       deduplication it would rely on was not confirmed
//	       (DEDUP_UNCONFIRMED): the caller's error is final
//	Warn   a dial through an HTTP CONNECT proxy failed: the proxy could not
//	       be reached or did not open the tunnel
//	Info   a failed call not sent again because the retry budget is spent
//	       (BUDGET_EXHAUSTED): the servers are failing more than the budget
//	       covers
//	Info   the idle horizon at which idle connections are retired, or the
//	       TCP keepalive, changed
//	Debug  each attempt, resend and hedge; other reasons not to resend
//	       (attempts exhausted, no time left, committed, server pushback);
//	       stale connections found, idle connections retired, direct dials
//	       that failed
//
// Records are written on the goroutine of the event, as hooks are called.
// Debug records are built only when l is enabled for slog.LevelDebug, asked
// at each event (so a slog.LevelVar may change it): at Info, a call that
// logs nothing allocates nothing more than without a logger.
//
// A server's GOAWAY with "too_many_pings" (gRFC A8: keepalive pings more
// often than the server allows) is not grpcguard's to log: grpc-go logs it
// itself, through grpclog at ERROR, which its default logger prints to
// stderr ("Client received GoAway with error code ENHANCE_YOUR_CALM and
// debug data equal to ASCII "too_many_pings"."), and doubles its keepalive
// time for new connections.
func WithLogger(l *slog.Logger) ClientOption {
	return clientOption(func(c *config) error {
		if l != nil {
			c.hooks = c.hooks.join(loggerHooks(l))
		}
		return nil
	})
}

// loggerHooks returns the hooks that log to l as WithLogger says.
func loggerHooks(l *slog.Logger) Hooks {
	bg := context.Background() // for events that belong to no call
	return Hooks{
		OnAttempt: func(ctx context.Context, e AttemptEvent) {
			if l.Enabled(ctx, slog.LevelDebug) {
				l.LogAttrs(ctx, slog.LevelDebug, "grpcguard: attempt",
					slog.String("method", e.Method), slog.Int("attempt", e.Attempt),
					slog.Bool("hedge", e.Hedge), slog.Bool("stream", e.Stream))
			}
		},
		OnRetry: func(ctx context.Context, e RetryEvent) {
			if l.Enabled(ctx, slog.LevelDebug) {
				l.LogAttrs(ctx, slog.LevelDebug, "grpcguard: resent",
					slog.String("method", e.Method), peerAttr(e.Peer), slog.Int("attempt", e.Attempt),
					errAttr(e.Err), slog.String("reason", e.Reason), slog.Duration("wait", e.Wait))
			}
		},
		OnHedge: func(ctx context.Context, e HedgeEvent) {
			if l.Enabled(ctx, slog.LevelDebug) {
				l.LogAttrs(ctx, slog.LevelDebug, "grpcguard: hedge sent",
					slog.String("method", e.Method), slog.Int("attempt", e.Attempt), slog.Duration("delay", e.Delay))
			}
		},
		OnNotResent: func(ctx context.Context, e NotResentEvent) {
			level, msg := notResentLevel(e.Reason)
			if l.Enabled(ctx, level) {
				l.LogAttrs(ctx, level, msg,
					slog.String("method", e.Method), peerAttr(e.Peer), slog.Int("attempt", e.Attempt),
					errAttr(e.Err), slog.String("reason", e.Reason))
			}
		},
		OnStaleConn: func(e StaleConnEvent) {
			if l.Enabled(bg, slog.LevelDebug) {
				l.LogAttrs(bg, slog.LevelDebug, "grpcguard: stale connection found",
					peerAttr(e.Remote), addrAttr("local", e.Local),
					slog.String("reason", e.Reason.String()), slog.Duration("idle", e.Idle))
			}
		},
		OnConnRetired: func(e ConnRetiredEvent) {
			if l.Enabled(bg, slog.LevelDebug) {
				l.LogAttrs(bg, slog.LevelDebug, "grpcguard: idle connection retired",
					peerAttr(e.Remote), addrAttr("local", e.Local), slog.Bool("learned", e.Learned))
			}
		},
		OnIdleHorizon: func(e IdleHorizonEvent) {
			l.LogAttrs(bg, slog.LevelInfo, "grpcguard: idle horizon changed",
				slog.Duration("horizon", e.Horizon), slog.Duration("keepalive", e.KeepAlive))
		},
		OnDialError: func(e DialErrorEvent) {
			level, msg := slog.LevelDebug, "grpcguard: dial failed"
			// A dial that grpc cancelled (its channel closing) says nothing
			// of the proxy.
			if e.Proxy != "" && !errors.Is(e.Err, context.Canceled) {
				level, msg = slog.LevelWarn, "grpcguard: dial through HTTP CONNECT proxy failed"
			}
			if l.Enabled(bg, level) {
				l.LogAttrs(bg, level, msg,
					slog.String("addr", e.Addr), slog.String("proxy", e.Proxy), errAttr(e.Err))
			}
		},
	}
}

// notResentLevel is the level and message of a call not resent for reason.
func notResentLevel(reason string) (slog.Level, string) {
	switch reason {
	case ReasonMayHaveRun:
		// The safety rule decided, and the caller's failure is final:
		// whoever operates the client should know how often.
		return slog.LevelWarn, "grpcguard: not resent: the call may have run"
	case ReasonDedupUnconfirmed:
		return slog.LevelWarn, "grpcguard: not resent: the server's deduplication was not confirmed"
	case ReasonBudgetExhausted:
		return slog.LevelInfo, "grpcguard: not resent: the retry budget is spent"
	}
	return slog.LevelDebug, "grpcguard: not resent"
}

// peerAttr is the attribute of the server an event concerns, as a string
// (a *net.TCPAddr would marshal as a struct in JSON).
func peerAttr(a net.Addr) slog.Attr { return addrAttr("peer", a) }

func addrAttr(key string, a net.Addr) slog.Attr {
	if a == nil {
		return slog.String(key, "")
	}
	return slog.String(key, a.String())
}

func errAttr(err error) slog.Attr { return slog.Any("error", err) }

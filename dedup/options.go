package dedup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/grpcguard/grpcguard/internal/wire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// ErrInvalidOption is matched (errors.Is) by the error of an invalid option
// or configuration: an Option (reported by the interceptor, see
// UnaryServerInterceptor) or a MemoryStoreConfig. Each error names the
// option and the value.
var ErrInvalidOption = errors.New("grpcguard: invalid option")

func invalid(option string, value any, reason string) error {
	return fmt.Errorf("%w: %s(%v): %s", ErrInvalidOption, option, value, reason)
}

// Option configures UnaryServerInterceptor.
type Option struct {
	apply func(*config) error
}

type config struct {
	ttl      time.Duration
	idFields []string
	key      func(ctx context.Context, id string) (string, error)
	failOpen bool
	metrics  *Metrics
	hooks    Hooks // WithHooks, WithLogger
}

// WithTTL sets how long ids and outcomes are kept. Default 5 minutes
// (DefaultTTL); valid from 1s to 24h. A claim whose handler is still
// running when the TTL passes expires too: keep handlers well inside it.
//
// The default suits grpcguard's own resends, which come within the call's
// deadline. Ids that callers set themselves and retry across processes (a
// job retried after a crash, a message a queue delivers again, a user
// pressing "pay" again) need the id kept as long as anyone may retry it:
// hours, up to 24h. Size the store for it: every outcome is kept the whole
// TTL, so a MemoryStore needs MaxBytes of about calls per second x TTL in
// seconds x (outcome size + 60 bytes): 100 calls/s for 1h with 300-byte
// outcomes is about 130 MB; a Redis store the same in maxmemory, with
// noeviction (redisstore's documentation says why).
func WithTTL(d time.Duration) Option {
	return Option{func(c *config) error {
		if d < wire.MinTTL || d > wire.MaxTTL {
			return invalid("WithTTL", d, "must be between 1s and 24h")
		}
		c.ttl = d
		return nil
	}}
}

// WithIDField takes a call's request id, when it carries no
// RequestIDHeader, from the first of the named fields its request message
// has: a top-level singular string field, such as AIP-155's "request_id" or
// AEP-155's "idempotency_key". An empty field, or a request without such a
// field, runs the call without deduplication, as a call without id does.
// The value is the id whole (up to 128 bytes; ';' is not a separator
// there), and WithKey applies to it as to a header's id. Such an id is
// the caller's own (see docs/dedup.md on caller-set ids): it is never a resend
// by grpcguard's rules, so a server that does not hold it runs it. Names
// are protobuf field names; none by default.
func WithIDField(names ...string) Option {
	return Option{func(c *config) error {
		for _, n := range names {
			if !protoreflect.Name(n).IsValid() {
				return invalid("WithIDField", fmt.Sprintf("%q", n), "must be a protobuf field name")
			}
		}
		c.idFields = append(c.idFields, names...)
		return nil
	}}
}

// WithKey scopes request ids: f returns the store key of a call's id,
// typically the caller's identity (from peer.FromContext, its AuthInfo, or a
// verified token) and the id, so that one caller can never reach another's
// ids, even by sending the same id and the same request. An error from f
// fails the call with f's status (Unauthenticated, say). Without it the key
// is the id itself. nil is invalid.
func WithKey(f func(ctx context.Context, id string) (string, error)) Option {
	return Option{func(c *config) error {
		if f == nil {
			return invalid("WithKey", "nil", "must not be nil")
		}
		c.key = f
		return nil
	}}
}

// WithFailOpen runs calls without deduplication when the store cannot
// claim their id (Redis down or slow), instead of failing them with
// Unavailable (the default, fail closed). Such calls carry no AdvertHeader, so
// clients do not resend them on its strength; but a resend that was already
// on its way may then run a second time. Choose it when availability matters
// more than at-most-once.
func WithFailOpen() Option {
	return Option{func(c *config) error {
		c.failOpen = true
		return nil
	}}
}

// WithMetrics counts into m.
func WithMetrics(m *Metrics) Option {
	return Option{func(c *config) error {
		c.metrics = m
		return nil
	}}
}

package testsvc

import (
	"context"
	"log/slog"
	"sync"
)

// Logs is a slog.Handler that keeps every record at or above Level, for
// tests that assert what was logged. It is safe for concurrent use.
type Logs struct {
	Level slog.Level

	mu   sync.Mutex
	recs []slog.Record
}

// Enabled implements slog.Handler.
func (h *Logs) Enabled(_ context.Context, l slog.Level) bool { return l >= h.Level }

// Handle implements slog.Handler.
func (h *Logs) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}

// WithAttrs implements slog.Handler; the attributes are dropped.
func (h *Logs) WithAttrs([]slog.Attr) slog.Handler { return h }

// WithGroup implements slog.Handler; the group is dropped.
func (h *Logs) WithGroup(string) slog.Handler { return h }

// Records returns the records kept at level or above.
func (h *Logs) Records(level slog.Level) []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.recs {
		if r.Level >= level {
			out = append(out, r)
		}
	}
	return out
}

// Attr returns the value of r's attribute key as a string, "" when r has
// none.
func Attr(r slog.Record, key string) string {
	var v string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}

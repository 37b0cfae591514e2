package dedup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
)

// events keeps what Hooks report, for tests.
type events struct {
	mu        sync.Mutex
	outcomes  []OutcomeEvent
	storeErrs []StoreErrorEvent
}

func (ev *events) hooks() Hooks {
	return Hooks{
		OnOutcome: func(_ context.Context, e OutcomeEvent) {
			ev.mu.Lock()
			ev.outcomes = append(ev.outcomes, e)
			ev.mu.Unlock()
		},
		OnStoreError: func(_ context.Context, e StoreErrorEvent) {
			ev.mu.Lock()
			ev.storeErrs = append(ev.storeErrs, e)
			ev.mu.Unlock()
		},
	}
}

// A store that cannot claim: one warning, and one StoreErrorEvent to the
// hooks, whether the call then fails closed or runs without dedup; failing
// open says so in its own warning.
func TestLoggerWarnsOnStoreErrorAndFailOpen(t *testing.T) {
	for _, open := range []bool{false, true} {
		t.Run(fmt.Sprint("open=", open), func(t *testing.T) {
			logs := &testsvc.Logs{Level: slog.LevelDebug}
			var ev events
			opts := []Option{WithLogger(slog.New(logs)), WithHooks(ev.hooks())}
			if open {
				opts = append(opts, WithFailOpen())
			}
			cc := newClient(t, dedupServer(t, &testsvc.Server{}, &failingStore{}, nil, opts...))
			_, err := testsvc.Call(withRequestID(ctxTimeout(t, 5*time.Second), "x"), cc, testsvc.Echo, "x")
			if (err == nil) != open {
				t.Fatalf("call: %v; want it to fail only when closed", err)
			}
			recs := logs.Records(slog.LevelDebug)
			if len(recs) != 1 {
				t.Fatalf("%d records, want 1: %v", len(recs), recs)
			}
			r := recs[0]
			if r.Level != slog.LevelWarn || strings.Contains(r.Message, "fail open") != open ||
				testsvc.Attr(r, "method") != testsvc.Echo || testsvc.Attr(r, "op") != StoreOpClaim ||
				!strings.Contains(testsvc.Attr(r, "error"), errUnreachable.Error()) {
				t.Fatalf("record %v %q %v: want a Warn naming the method, the claim and the store's error, and fail open iff open", r.Level, r.Message, r)
			}
			ev.mu.Lock()
			defer ev.mu.Unlock()
			if len(ev.storeErrs) != 1 {
				t.Fatalf("%d StoreErrorEvents, want 1", len(ev.storeErrs))
			}
			if e := ev.storeErrs[0]; e.Method != testsvc.Echo || e.Op != StoreOpClaim || !errors.Is(e.Err, errUnreachable) || e.FailOpen != open {
				t.Fatalf("StoreErrorEvent %+v: want the method, claim, the store's error and FailOpen=%v", e, open)
			}
			if len(ev.outcomes) != 0 {
				t.Fatalf("outcomes %v, want none: no call was decided by the store", ev.outcomes)
			}
		})
	}
}

// Outcomes reach every hook set, in the order the calls were decided; the
// logger logs none of them.
func TestHooksSeeOutcomes(t *testing.T) {
	logs := &testsvc.Logs{Level: slog.LevelDebug}
	var ev, again events
	cc := newClient(t, dedupServer(t, &testsvc.Server{}, nil, nil,
		WithHooks(ev.hooks()), WithLogger(slog.New(logs)), WithHooks(again.hooks())))
	ctx := withRequestID(ctxTimeout(t, 5*time.Second), "outcomes-id")
	for _, req := range []string{"a", "a", "b"} { // run, duplicate, another request under the id
		testsvc.Call(ctx, cc, testsvc.Echo, req)
	}
	want := []OutcomeEvent{
		{Method: testsvc.Echo, Outcome: OutcomeExecuted},
		{Method: testsvc.Echo, Outcome: OutcomeAnswered},
		{Method: testsvc.Echo, Outcome: OutcomeConflict},
	}
	for _, e := range []*events{&ev, &again} {
		e.mu.Lock()
		got := slices.Clone(e.outcomes)
		e.mu.Unlock()
		if !slices.Equal(got, want) {
			t.Fatalf("outcomes %v, want %v", got, want)
		}
	}
	if recs := logs.Records(slog.LevelDebug); len(recs) != 0 {
		t.Fatalf("logged %v, want nothing: outcomes are not logged", recs)
	}
}

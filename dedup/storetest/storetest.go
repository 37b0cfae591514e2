// Package storetest is the conformance suite of dedup.Store: Run checks the
// contract every store keeps (what Claim, Finish, Release and Wait return,
// expiry, concurrency, that a canceled context does not stop an outcome
// being stored), and Soak drives a deduplicating service, through a
// grpcguard client that resends over faulty connections, to check that
// every request runs exactly once. MemoryStore and redisstore both run
// them; a new store runs them the same way:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) dedup.Store { return newStore(t) })
//	}
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/dedup"
)

// bound is how long any one operation of the suite may take: far more than
// a healthy store needs, so that a failure means a store that hangs.
const bound = 10 * time.Second

// Run runs the contract tests of dedup.Store, each as a subtest, on stores
// made by newStore. Each subtest makes its own store, and keys no other
// subtest uses; newStore registers the store's cleanup with t.
func Run(t *testing.T, newStore func(t *testing.T) dedup.Store) {
	t.Helper()
	for _, c := range []struct {
		name string
		run  func(*testing.T, dedup.Store)
	}{
		{"ClaimFinishRelease", testClaimFinishRelease},
		{"ValuesAreCopied", testValuesAreCopied},
		{"ClaimExpires", testClaimExpires},
		{"OutcomeExpires", testOutcomeExpires},
		{"WaitWakes", testWaitWakes},
		{"WaitEndsWithContext", testWaitEndsWithContext},
		{"CanceledContextStillStores", testCanceledContextStillStores},
		{"ConcurrentClaimsOneWins", testConcurrentClaimsOneWins},
		{"Retention", testRetention},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, newStore(t)) })
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// claimOf returns a claim value: opaque bytes, binary, unique per name.
func claimOf(name string) []byte { return append([]byte("C\x00\xff"), name...) }

// waitFor polls cond until it holds or bound passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", bound, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A first claim stores; a second returns the first and the same scope;
// Finish and Release act only on their own claim; an outcome, binary, reads
// back whole; a released key is free.
func testClaimFinishRelease(t *testing.T, s dedup.Store) {
	ctx := ctxTimeout(t, bound)
	c1, c2 := claimOf("1"), claimOf("2")
	existing, scope, err := s.Claim(ctx, "cfr", c1, time.Minute)
	if err != nil || existing != nil || scope == "" {
		t.Fatalf("first claim: %q, scope %q, %v; want nothing held and a scope", existing, scope, err)
	}
	existing, scope2, err := s.Claim(ctx, "cfr", c2, time.Minute)
	if err != nil || !bytes.Equal(existing, c1) || scope2 != scope {
		t.Fatalf("second claim: %q, scope %q, %v; want the first claim and scope %q", existing, scope2, err, scope)
	}
	if err := s.Finish(ctx, "cfr", c2, []byte("x"), time.Minute); !errors.Is(err, dedup.ErrClaimLost) {
		t.Fatalf("Finish with another's claim: %v, want ErrClaimLost", err)
	}
	if err := s.Release(ctx, "cfr", c2); !errors.Is(err, dedup.ErrClaimLost) {
		t.Fatalf("Release with another's claim: %v, want ErrClaimLost", err)
	}
	outcome := []byte("O\x00\xff\x01binary outcome")
	if err := s.Finish(ctx, "cfr", c1, outcome, time.Minute); err != nil {
		t.Fatal(err)
	}
	if existing, _, err := s.Claim(ctx, "cfr", claimOf("3"), time.Minute); err != nil || !bytes.Equal(existing, outcome) {
		t.Fatalf("after Finish: %q, %v; want the outcome", existing, err)
	}
	if err := s.Finish(ctx, "cfr", c1, []byte("again"), time.Minute); !errors.Is(err, dedup.ErrClaimLost) {
		t.Fatalf("Finish over an outcome: %v, want ErrClaimLost", err)
	}
	if err := s.Release(ctx, "cfr", c1); !errors.Is(err, dedup.ErrClaimLost) {
		t.Fatalf("Release of a finished claim: %v, want ErrClaimLost", err)
	}
	if _, _, err := s.Claim(ctx, "rel", c1, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, "rel", c1); err != nil {
		t.Fatal(err)
	}
	if existing, _, err := s.Claim(ctx, "rel", c2, time.Minute); err != nil || existing != nil {
		t.Fatalf("after Release: %q, %v; want the key free", existing, err)
	}
}

// What Claim returns is the caller's, and a store copies the outcome it
// keeps: the interceptor reuses both buffers.
func testValuesAreCopied(t *testing.T, s dedup.Store) {
	ctx := ctxTimeout(t, bound)
	c := claimOf("copy")
	if _, _, err := s.Claim(ctx, "copy", c, time.Minute); err != nil {
		t.Fatal(err)
	}
	outcome := []byte("outcome")
	if err := s.Finish(ctx, "copy", c, outcome, time.Minute); err != nil {
		t.Fatal(err)
	}
	copy(outcome, "XXXXXXX")
	got, _, err := s.Claim(ctx, "copy", claimOf("other"), time.Minute)
	if err != nil || string(got) != "outcome" {
		t.Fatalf("after the caller reused its buffer: %q, %v; want the outcome as it was", got, err)
	}
	copy(got, "YYYYYYY")
	if again, _, _ := s.Claim(ctx, "copy", claimOf("other"), time.Minute); string(again) != "outcome" {
		t.Fatalf("after the caller wrote what Claim returned: %q; want the outcome as it was", again)
	}
}

// A claim held past its TTL expires; its owner's Finish and Release then
// fail with ErrClaimLost and change nothing.
func testClaimExpires(t *testing.T, s dedup.Store) {
	ctx := ctxTimeout(t, 2*bound)
	c1 := claimOf("1")
	if _, _, err := s.Claim(ctx, "exp", c1, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	c2 := claimOf("2")
	waitFor(t, "the claim to expire", func() bool {
		existing, _, err := s.Claim(ctx, "exp", c2, time.Minute)
		return err == nil && existing == nil
	})
	if err := s.Finish(ctx, "exp", c1, []byte("late"), time.Minute); !errors.Is(err, dedup.ErrClaimLost) {
		t.Fatalf("Finish of an expired claim: %v, want ErrClaimLost", err)
	}
	if err := s.Release(ctx, "exp", c1); !errors.Is(err, dedup.ErrClaimLost) {
		t.Fatalf("Release of an expired claim: %v, want ErrClaimLost", err)
	}
	if existing, _, _ := s.Claim(ctx, "exp", claimOf("3"), time.Minute); !bytes.Equal(existing, c2) {
		t.Fatalf("after the expired owner's Finish: %q, want the new claim kept", existing)
	}
}

// An outcome is kept for the TTL given to Finish, then the key is free.
func testOutcomeExpires(t *testing.T, s dedup.Store) {
	ctx := ctxTimeout(t, 2*bound)
	c := claimOf("1")
	if _, _, err := s.Claim(ctx, "oexp", c, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Finish(ctx, "oexp", c, []byte("outcome"), 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the outcome to expire", func() bool {
		existing, _, err := s.Claim(ctx, "oexp", claimOf("2"), time.Minute)
		return err == nil && existing == nil
	})
}

// wait runs s.Wait in a goroutine; the result arrives on the channel.
func wait(ctx context.Context, s dedup.Store, key string, running []byte) <-chan waitResult {
	ch := make(chan waitResult, 1)
	go func() {
		cur, err := s.Wait(ctx, key, running)
		ch <- waitResult{cur, err}
	}()
	return ch
}

type waitResult struct {
	cur []byte
	err error
}

func await(t *testing.T, ch <-chan waitResult) waitResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(bound):
		t.Fatalf("Wait did not return within %v", bound)
		return waitResult{}
	}
}

// Wait returns at once when the key no longer holds the claim, and wakes
// when it is finished (with the outcome), released (nothing) or expires
// (nothing).
func testWaitWakes(t *testing.T, s dedup.Store) {
	ctx := ctxTimeout(t, 4*bound)
	if r := await(t, wait(ctx, s, "w-none", claimOf("x"))); r.err != nil || r.cur != nil {
		t.Fatalf("Wait on a free key: %q, %v; want nothing at once", r.cur, r.err)
	}
	for _, end := range []string{"finish", "release", "expire"} {
		key, c := "w-"+end, claimOf(end)
		ttl := time.Minute
		if end == "expire" {
			ttl = 200 * time.Millisecond
		}
		if _, _, err := s.Claim(ctx, key, c, ttl); err != nil {
			t.Fatal(err)
		}
		ch := wait(ctx, s, key, c)
		time.Sleep(20 * time.Millisecond) // let it block (a store must not need it)
		var err error
		switch end {
		case "finish":
			err = s.Finish(ctx, key, c, []byte("done"), time.Minute)
		case "release":
			err = s.Release(ctx, key, c)
		}
		if err != nil {
			t.Fatal(err)
		}
		r := await(t, ch)
		want := ""
		if end == "finish" {
			want = "done"
		}
		if r.err != nil || string(r.cur) != want || (want == "" && r.cur != nil) {
			t.Fatalf("Wait, then %s: %q, %v; want %q", end, r.cur, r.err, want)
		}
	}
}

// Wait on a running claim returns once its context ends.
func testWaitEndsWithContext(t *testing.T, s dedup.Store) {
	ctx := ctxTimeout(t, bound)
	c := claimOf("1")
	if _, _, err := s.Claim(ctx, "w-ctx", c, time.Minute); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	await(t, wait(wctx, s, "w-ctx", c))
	if took := time.Since(start); took > bound/2 {
		t.Fatalf("Wait returned %v after its context ended", took)
	}
}

// Finish and Release store even when the caller's context was canceled:
// the caller may have gone, the outcome is still wanted.
func testCanceledContextStillStores(t *testing.T, s dedup.Store) {
	ctx := ctxTimeout(t, bound)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	c := claimOf("1")
	if _, _, err := s.Claim(ctx, "cc-f", c, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Finish(canceled, "cc-f", c, []byte("kept"), time.Minute); err != nil {
		t.Fatalf("Finish with a canceled context: %v", err)
	}
	if existing, _, _ := s.Claim(ctx, "cc-f", claimOf("2"), time.Minute); string(existing) != "kept" {
		t.Fatalf("after Finish with a canceled context: %q, want the outcome", existing)
	}
	if _, _, err := s.Claim(ctx, "cc-r", c, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(canceled, "cc-r", c); err != nil {
		t.Fatalf("Release with a canceled context: %v", err)
	}
	if existing, _, _ := s.Claim(ctx, "cc-r", claimOf("2"), time.Minute); existing != nil {
		t.Fatalf("after Release with a canceled context: %q, want the key free", existing)
	}
}

// Of many claims of one key at once, exactly one stores; the others see it.
func testConcurrentClaimsOneWins(t *testing.T, s dedup.Store) {
	ctx := ctxTimeout(t, bound)
	const n = 32
	var wg sync.WaitGroup
	results := make([][]byte, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], _, errs[i] = s.Claim(ctx, "race", claimOf(fmt.Sprint(i)), time.Minute)
		}()
	}
	wg.Wait()
	winner := -1
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("claim %d: %v", i, errs[i])
		}
		if results[i] == nil {
			if winner >= 0 {
				t.Fatalf("claims %d and %d both stored", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatal("no claim stored")
	}
	for i := range n {
		if i != winner && !bytes.Equal(results[i], claimOf(fmt.Sprint(winner))) {
			t.Fatalf("claim %d saw %q, want the winner's", i, results[i])
		}
	}
}

// A store that lost nothing keeps ids the whole TTL, and never longer; a
// RetentionChecker agrees.
func testRetention(t *testing.T, s dedup.Store) {
	ctx := ctxTimeout(t, bound)
	if _, _, err := s.Claim(ctx, "ret", claimOf("1"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if keep := s.Retention(time.Minute); keep <= 0 || keep > time.Minute {
		t.Fatalf("Retention(1m) = %v, want within (0, 1m]", keep)
	}
	if rc, ok := s.(dedup.RetentionChecker); ok {
		keep, err := rc.CheckRetention(ctx, time.Minute)
		if err != nil || keep <= 0 || keep > time.Minute {
			t.Fatalf("CheckRetention(1m) = %v, %v; want within (0, 1m]", keep, err)
		}
	}
}

package dedup

import (
	"context"
	"errors"
	"time"
)

// Store keeps, for UnaryServerInterceptor, a value under each request id: a claim
// while the call runs, then its outcome, until the TTL passes. Values are
// opaque bytes the interceptor writes; a store compares them byte for byte
// and never interprets them. MemoryStore (the default) keeps them in the
// process; the module github.com/grpcguard/grpcguard/redisstore keeps them in
// Redis, shared by every replica of a server.
//
// Implementations are safe for concurrent use and bound their own operations
// in time (a store that cannot answer returns an error; UnaryServerInterceptor then
// fails the call closed, or runs it without deduplication, as configured).
type Store interface {
	// Claim stores value under key for ttl if key holds nothing, and returns
	// nil; otherwise it stores nothing and returns what key holds. It also
	// returns the store's scope (see Scope) at the moment of the claim. The
	// caller leaves value unchanged until it finishes or releases the
	// claim, so a store may keep it; the returned bytes are the caller's.
	Claim(ctx context.Context, key string, value []byte, ttl time.Duration) (existing []byte, scope string, err error)
	// Finish replaces claim, the value key holds, with outcome, kept for ttl
	// from now, and wakes the waiters of key. The caller reuses outcome's
	// bytes once Finish returns: a store copies what it keeps. If key no longer holds claim
	// (it expired, or another claim took its place) it returns an error
	// matching ErrClaimLost and changes nothing. ctx is the call's: Finish
	// must not give up because it is canceled (the caller may have gone, the
	// outcome is still wanted), only bound itself in time.
	Finish(ctx context.Context, key string, claim, outcome []byte, ttl time.Duration) error
	// Release removes key if it holds claim, and wakes the waiters of key.
	// Like Finish, it must not give up because ctx is canceled.
	Release(ctx context.Context, key string, claim []byte) error
	// Wait blocks until key no longer holds running (it was finished,
	// released or expired) or ctx ends, and returns what key holds then (nil
	// for nothing). It must not poll in a busy loop.
	Wait(ctx context.Context, key string, running []byte) (current []byte, err error)
	// Retention returns how long the store keeps ids now: ttl, or less when
	// it has had to drop ids before their TTL ran out (memory pressure).
	// UnaryServerInterceptor advertises it, and refuses a resend older than it.
	Retention(ttl time.Duration) time.Duration
}

// RetentionChecker is implemented by a Store that can lose ids before their
// TTL in ways it learns only by asking its backend: a Redis that evicts keys
// under memory pressure, restarts, or fails over to a replica that missed
// the last writes. Before UnaryServerInterceptor runs a resend of an id its store
// did not hold, under the claim it has just made, it asks, and refuses the
// resend unless its first attempt is younger than the answer: the id may
// have been lost. Only such resends ask (rare: the common lost reply finds
// its outcome), so the check may cost a round trip to the backend.
type RetentionChecker interface {
	// CheckRetention returns how long, as of now and from the backend
	// itself (never a cached belief), the store has kept every id it was
	// given: ttl, or the time since it may last have lost ids, if shorter.
	// An error refuses the resend.
	CheckRetention(ctx context.Context, ttl time.Duration) (time.Duration, error)
}

// The scope of a store names what it remembers: servers whose stores report
// the same scope share their ids, and a store that has lost what it held (a
// restarted process, a flushed Redis) reports a new scope. A MemoryStore's
// scope is random per store; a Redis store's is kept in Redis itself. A
// client that resends a call names the scope the first attempt may have run
// under, and a server whose store has another scope refuses the resend
// rather than run it a second time.

var (
	// ErrClaimLost is returned by Store.Finish and Store.Release when the key
	// no longer holds the caller's claim.
	ErrClaimLost = errors.New("grpcguard: dedup claim lost (expired or replaced)")
	// ErrStoreFull is returned by Store.Claim when the store cannot take a
	// new id without dropping one that is still running.
	ErrStoreFull = errors.New("grpcguard: dedup store full")
)

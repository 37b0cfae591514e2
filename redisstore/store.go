// Package redisstore is a dedup.Store in Redis, for servers with several
// replicas behind a balancer: a resend that reaches another replica than the
// first attempt finds the id there, claimed or answered.
//
//	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379"})
//	store := redisstore.New(rdb, redisstore.Options{})
//	defer store.Close()
//	sd := dedup.NewServer(store)
//	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(sd.UnaryServerInterceptor()))
//	sd.RegisterService(srv) // the lookup clients ask before a resend
//
// A claim is a SET NX with the TTL as expiry; the outcome replaces it, as
// bytes, only while the claim is still the caller's (a Lua script compares
// and sets atomically), and is published on one Redis channel so that
// duplicates waiting on any replica wake at once. Waiters subscribe through
// one connection per Store and re-read the key when woken, when the
// subscription is re-established (messages sent meanwhile are lost), and at
// a slow fallback interval; they never poll in a loop.
//
// The scope (see dedup.Store) is a random value kept in Redis under the
// prefix, created by the first claim: every replica sharing the Redis and the
// prefix reports it. A Redis that lost it (a restart without persistence)
// gets back the scope its replicas last saw, so that clients that learned
// it go on resending the calls made since, instead of taking every replica
// for one with a new store and resending nothing for the retention (5
// minutes by default).
//
// Lost ids. Redis can lose keys before their TTL: it evicts them under
// maxmemory, restarts (without persistence, or with an RDB snapshot older
// than the last writes), or fails over to a replica that missed the last
// writes. Every claim and outcome has a TTL (PX), so under a volatile-*
// policy they are exactly the keys Redis evicts, and under allkeys-* they
// are among them. Whatever the cause, a resend of an id that Redis lost
// finds nothing, and must not run. So before a resend of an id Redis does
// not hold runs, the store asks Redis (CheckRetention, one script): the
// loss marker under the prefix records the Redis process (run_id) and its
// evicted_keys count; when either differs from what Redis now reports,
// Redis may have lost keys, the marker is rewritten with the time, and every
// resend whose first attempt began before it is refused
// (FailedPrecondition). Calls made since are protected again at once.
//
// Which maxmemory-policy: noeviction (or no maxmemory) is the only one under
// which Redis never drops an id before its TTL; a full Redis then fails
// claims, and calls fail closed (Unavailable) without running. Under any
// other policy deduplication still never runs a resend twice, but an
// eviction anywhere in the Redis (of any key, not only this store's: Redis
// does not say which) refuses the resends outstanding at that moment: give
// the store a Redis, or a maxmemory, of its own.
//
// Requirements and limits: Redis 3.2 or newer (Lua with effects
// replication, SET NX PX); asynchronous replication loses the last writes
// on failover: the new primary's run_id differs, so resends from before are
// refused, as after a restart. Keys are "<prefix><key>", "<prefix>scope" and
// "<prefix>loss"; on Redis Cluster every key of a call must be in one slot,
// so put a hash tag in the prefix ("{grpcguard}:"). A store carries its
// scope into an empty Redis: move replicas to another Redis only when they
// restart, not while replicas on the old one still serve.
//
// Redis down or slow: every operation is bounded by Options.OpTimeout and
// fails with an error naming it; dedup.UnaryServerInterceptor then fails the
// call with Unavailable before running it (or runs it without deduplication
// with dedup.WithFailOpen). An outcome that cannot be stored is still
// returned to its caller; its claim expires after the TTL.
package redisstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/redis/go-redis/v9"
)

// Defaults of Options.
const (
	DefaultPrefix       = "grpcguard:dedup:"
	DefaultOpTimeout    = time.Second
	DefaultPollInterval = time.Second
)

// Options configures a Store. Zero fields take their defaults.
type Options struct {
	// Prefix starts every key the store writes, and names its channel.
	// Replicas that share ids must share it. Default "grpcguard:dedup:".
	Prefix string
	// OpTimeout bounds each Redis operation, whatever the caller's context.
	// Default 1s: a Redis that takes longer is treated as down.
	OpTimeout time.Duration
	// PollInterval is how often a waiting duplicate re-reads its key in case
	// a notification was lost, doubling up to 8 times it. Default 1s. It is a
	// safety net: waiters wake on the notification.
	PollInterval time.Duration
}

// Store is a dedup.Store in Redis. Safe for concurrent use; Close it when
// done to stop its subscription.
type Store struct {
	rdb     redis.UniversalClient
	opts    Options
	scopeK  string
	lossK   string
	channel string

	// scope is the scope this store last saw, carried over into a Redis
	// that lost it (a restart), so that clients do not take the replica for
	// one with another store; the loss marker refuses the resends of what
	// was lost.
	scope atomic.Pointer[string]
	// lostAt is when (nanotime) Redis may last have lost keys, as the last
	// check found, 0 if never: Retention advertises the time since.
	lostAt atomic.Int64

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
	ps      *redis.PubSub
	ready   chan struct{} // closed when the subscription is confirmed
	subErr  error
	closed  bool
	done    chan struct{} // closed when the dispatcher ends
}

var (
	_ dedup.Store            = (*Store)(nil)
	_ dedup.RetentionChecker = (*Store)(nil)
)

// New returns a Store on rdb. It does not contact Redis: the first operation
// does.
func New(rdb redis.UniversalClient, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.OpTimeout <= 0 {
		opts.OpTimeout = DefaultOpTimeout
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	return &Store{
		rdb:     rdb,
		opts:    opts,
		scopeK:  opts.Prefix + "scope",
		lossK:   opts.Prefix + "loss",
		channel: opts.Prefix + "done",
		waiters: make(map[string]map[chan struct{}]struct{}),
	}
}

// lossLua defines, for the scripts that need them, mark(): what tells one
// Redis process and its evictions apart, "<run_id>:<evicted_keys>", and
// now(): the Redis server's clock in microseconds, one clock for every
// replica. A restart or a failover changes run_id; an eviction
// evicted_keys; CONFIG RESETSTAT resets it, which also reads as a loss.
// Effects replication, for writes after TIME and INFO: the default from
// Redis 5, asked for before.
const lossLua = `
if redis.replicate_commands then redis.replicate_commands() end
local function mark()
  local ev = string.match(redis.call('INFO', 'stats'), 'evicted_keys:(%d+)') or '?'
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '?'
  return run .. ':' .. ev
end
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
`

// claimScript: the scope, created if missing, and either a new claim (SET
// NX PX) or what key holds. A missing scope means Redis holds nothing of
// this prefix (a new Redis, or one that lost its data): the scope is set to
// ARGV[3], the one this store last saw (or a new one), and the loss marker
// (KEYS[3]) says that nothing older than now is known.
var claimScript = redis.NewScript(lossLua + `
local scope = redis.call('GET', KEYS[2])
if not scope then
  scope = ARGV[3]
  redis.call('SET', KEYS[2], scope)
  redis.call('HSET', KEYS[3], 'mark', mark())
  redis.call('HSET', KEYS[3], 'since', now())
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {scope}
end
return {scope, redis.call('GET', KEYS[1])}
`)

// checkScript returns when Redis may last have lost keys (the loss marker's
// since, microseconds) and now: if the marker (KEYS[1]) is missing or names
// another process or eviction count than Redis now reports, Redis may have
// lost keys since it was written, and since becomes now.
var checkScript = redis.NewScript(lossLua + `
local m, t = mark(), now()
local cur = redis.call('HMGET', KEYS[1], 'mark', 'since')
if cur[1] ~= m or not cur[2] then
  redis.call('HSET', KEYS[1], 'mark', m)
  redis.call('HSET', KEYS[1], 'since', t)
  return {t, t}
end
return {tonumber(cur[2]), t}
`)

// finishScript replaces the caller's claim with the outcome and notifies.
var finishScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
`)

// releaseScript deletes the caller's claim and notifies.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
`)

func (s *Store) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.OpTimeout)
}

// detached bounds an operation that must not stop because the call's
// context was canceled (Finish, Release), only by OpTimeout.
func (s *Store) detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.opts.OpTimeout)
}

// Claim implements dedup.Store.
func (s *Store) Claim(ctx context.Context, key string, value []byte, ttl time.Duration) ([]byte, string, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	var candidate string
	if p := s.scope.Load(); p != nil {
		candidate = *p
	} else {
		candidate = strconv.FormatUint(rand.Uint64(), 16) + strconv.FormatUint(rand.Uint64(), 16)
	}
	res, err := claimScript.Run(ctx, s.rdb, []string{s.opts.Prefix + key, s.scopeK, s.lossK}, value, ttl.Milliseconds(), candidate).Slice()
	if err != nil {
		return nil, "", fmt.Errorf("redisstore: claim: %w", err)
	}
	if len(res) == 0 || len(res) > 2 {
		return nil, "", fmt.Errorf("redisstore: claim: unexpected reply %v", res)
	}
	scope, _ := res[0].(string)
	if p := s.scope.Load(); p == nil || *p != scope {
		s.scope.Store(&scope)
	}
	if len(res) == 1 {
		return nil, scope, nil
	}
	existing, ok := res[1].(string)
	if !ok {
		// The claim failed, then the key vanished: impossible inside one
		// script; report rather than guess.
		return nil, "", fmt.Errorf("redisstore: claim: unexpected reply %v", res)
	}
	return []byte(existing), scope, nil
}

// Finish implements dedup.Store.
func (s *Store) Finish(ctx context.Context, key string, claim, outcome []byte, ttl time.Duration) error {
	ctx, cancel := s.detached(ctx)
	defer cancel()
	n, err := finishScript.Run(ctx, s.rdb, []string{s.opts.Prefix + key}, claim, outcome, ttl.Milliseconds(), s.channel).Int()
	if err != nil {
		return fmt.Errorf("redisstore: finish: %w", err)
	}
	if n == 0 {
		return dedup.ErrClaimLost
	}
	return nil
}

// Release implements dedup.Store.
func (s *Store) Release(ctx context.Context, key string, claim []byte) error {
	ctx, cancel := s.detached(ctx)
	defer cancel()
	n, err := releaseScript.Run(ctx, s.rdb, []string{s.opts.Prefix + key}, claim, s.channel).Int()
	if err != nil {
		return fmt.Errorf("redisstore: release: %w", err)
	}
	if n == 0 {
		return dedup.ErrClaimLost
	}
	return nil
}

// Retention implements dedup.Store: Redis keeps keys for their TTL,
// unless it lost them; this is the time since a check (CheckRetention) last
// found that it may have, if shorter. It is what replicas advertise;
// CheckRetention decides.
func (s *Store) Retention(ttl time.Duration) time.Duration {
	at := s.lostAt.Load()
	if at == 0 {
		return ttl
	}
	return min(ttl, time.Duration(nanotime()-at))
}

// CheckRetention implements dedup.RetentionChecker: it asks Redis
// whether it evicted keys, restarted or failed over since the loss marker
// was written, and returns the time since it may last have lost keys (ttl
// if longer). Any eviction counts, of this store's keys or others': Redis
// does not say which keys it evicted. One round trip, asked only before a
// resend of an id Redis does not hold runs.
func (s *Store) CheckRetention(ctx context.Context, ttl time.Duration) (time.Duration, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	res, err := checkScript.Run(ctx, s.rdb, []string{s.lossK}).Int64Slice()
	if err != nil {
		return 0, fmt.Errorf("redisstore: check retention: %w", err)
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("redisstore: check retention: unexpected reply %v", res)
	}
	keep := min(ttl, time.Duration(max(res[1]-res[0], 0))*time.Microsecond)
	if keep < ttl {
		at := nanotime() - int64(keep)
		for old := s.lostAt.Load(); at > old && !s.lostAt.CompareAndSwap(old, at); old = s.lostAt.Load() {
		}
	}
	return keep, nil
}

// nanotime is a monotonic clock reading in nanoseconds.
func nanotime() int64 { return int64(time.Since(epoch)) }

var epoch = time.Now()

// Wait implements dedup.Store: it wakes on the notification of Finish or
// Release, on a re-established subscription, or at the fallback interval,
// and re-reads the key each time.
func (s *Store) Wait(ctx context.Context, key string, running []byte) ([]byte, error) {
	wake := make(chan struct{}, 1)
	s.addWaiter(key, wake)
	defer s.removeWaiter(key, wake)
	if err := s.subscribe(ctx); err != nil {
		return nil, err
	}
	poll := s.opts.PollInterval
	t := time.NewTimer(poll)
	defer t.Stop()
	for {
		cur, err := s.get(ctx, key)
		if err != nil || !bytes.Equal(cur, running) {
			return cur, err
		}
		select {
		case <-wake:
		case <-t.C:
			poll = min(2*poll, 8*s.opts.PollInterval)
			t.Reset(poll)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *Store) get(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	b, err := s.rdb.Get(ctx, s.opts.Prefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: wait: %w", err)
	}
	return b, nil
}

func (s *Store) addWaiter(key string, ch chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.waiters[key]
	if w == nil {
		w = make(map[chan struct{}]struct{})
		s.waiters[key] = w
	}
	w[ch] = struct{}{}
}

func (s *Store) removeWaiter(key string, ch chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.waiters[key], ch)
	if len(s.waiters[key]) == 0 {
		delete(s.waiters, key)
	}
}

// wakeLocked wakes the waiters of key, or every waiter when all is set.
func (s *Store) wakeLocked(key string, all bool) {
	for k, w := range s.waiters {
		if !all && k != key {
			continue
		}
		for ch := range w {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

// subscribe starts the store's subscription once and waits until Redis has
// confirmed it, so that no notification sent after it returns is missed.
func (s *Store) subscribe(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("redisstore: store closed")
	}
	if s.ready == nil || s.subErr != nil {
		s.subErr = nil
		s.ready = make(chan struct{})
		go s.start(s.ready)
	}
	ready := s.ready
	s.mu.Unlock()
	select {
	case <-ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.subErr
}

// start subscribes, then dispatches notifications until Close.
func (s *Store) start(ready chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.OpTimeout)
	ps := s.rdb.Subscribe(ctx, s.channel)
	_, err := ps.Receive(ctx) // the subscription's confirmation
	cancel()
	s.mu.Lock()
	if err != nil || s.closed {
		if err == nil {
			err = errors.New("redisstore: store closed")
		}
		s.subErr = fmt.Errorf("redisstore: subscribe: %w", err)
		s.mu.Unlock()
		ps.Close()
		close(ready)
		return
	}
	s.ps = ps
	s.done = make(chan struct{})
	done := s.done
	s.mu.Unlock()
	close(ready)
	defer close(done)
	for m := range ps.ChannelWithSubscriptions() {
		s.mu.Lock()
		switch m := m.(type) {
		case *redis.Message:
			key, ok := bytes.CutPrefix([]byte(m.Payload), []byte(s.opts.Prefix))
			if ok {
				s.wakeLocked(string(key), false)
			}
		case *redis.Subscription:
			// Re-subscribed after a lost connection: what was published
			// meanwhile is lost, so every waiter looks again.
			s.wakeLocked("", true)
		}
		s.mu.Unlock()
	}
}

// Close stops the subscription. Operations after Close fail.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	ps, done := s.ps, s.done
	s.ps = nil
	s.mu.Unlock()
	if ps == nil {
		return nil
	}
	err := ps.Close()
	<-done
	return err
}

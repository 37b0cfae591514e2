// Package redisstore is a grpcguard.Store in Redis, for servers with several
// replicas behind a balancer: a resend that reaches another replica than the
// first attempt finds the id there, claimed or answered.
//
//	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379"})
//	store := redisstore.New(rdb, redisstore.Options{})
//	defer store.Close()
//	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(grpcguard.UnaryServerDedup(store)))
//
// A claim is a SET NX with the TTL as expiry; the outcome replaces it, as
// bytes, only while the claim is still the caller's (a Lua script compares
// and sets atomically), and is published on one Redis channel so that
// duplicates waiting on any replica wake at once. Waiters subscribe through
// one connection per Store and re-read the key when woken, when the
// subscription is re-established (messages sent meanwhile are lost), and at
// a slow fallback interval; they never poll in a loop.
//
// The scope (see grpcguard.Store) is a random value kept in Redis under the
// prefix, created by the first claim: every replica sharing the Redis and the
// prefix reports it, and a Redis that lost its data gets a new one, so that a
// resend of an id the lost data may have held is refused, not run again.
//
// Requirements and limits: Redis 2.6.12 or newer (Lua, SET NX PX); a
// maxmemory-policy that never evicts these keys (noeviction, or volatile-*
// with no other volatile keys), since an evicted claim is a forgotten id;
// asynchronous replication loses the last writes on failover, and with them
// the claims made just before it. Keys are "<prefix><key>"; on Redis Cluster
// every key of a call must be in one slot, so put a hash tag in the prefix
// ("{grpcguard}:").
//
// Redis down or slow: every operation is bounded by Options.OpTimeout and
// fails with an error naming it; grpcguard.UnaryServerDedup then fails the
// call with Unavailable before running it (or runs it without deduplication
// with grpcguard.WithDedupFailOpen). An outcome that cannot be stored is still
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
	"time"

	"github.com/grpcguard/grpcguard"
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

// Store is a grpcguard.Store in Redis. Safe for concurrent use; Close it when
// done to stop its subscription.
type Store struct {
	rdb     redis.UniversalClient
	opts    Options
	scopeK  string
	channel string

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
	ps      *redis.PubSub
	ready   chan struct{} // closed when the subscription is confirmed
	subErr  error
	closed  bool
	done    chan struct{} // closed when the dispatcher ends
}

var _ grpcguard.Store = (*Store)(nil)

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
		channel: opts.Prefix + "done",
		waiters: make(map[string]map[chan struct{}]struct{}),
	}
}

// claimScript: the scope, created if missing, and either a new claim (SET
// NX PX) or what the key holds.
var claimScript = redis.NewScript(`
local scope = redis.call('GET', KEYS[2])
if not scope then
  redis.call('SET', KEYS[2], ARGV[3])
  scope = ARGV[3]
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {scope}
end
return {scope, redis.call('GET', KEYS[1])}
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

// Claim implements grpcguard.Store.
func (s *Store) Claim(ctx context.Context, key string, value []byte, ttl time.Duration) ([]byte, string, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	candidate := strconv.FormatUint(rand.Uint64(), 16) + strconv.FormatUint(rand.Uint64(), 16)
	res, err := claimScript.Run(ctx, s.rdb, []string{s.opts.Prefix + key, s.scopeK}, value, ttl.Milliseconds(), candidate).Slice()
	if err != nil {
		return nil, "", fmt.Errorf("redisstore: claim: %w", err)
	}
	if len(res) == 0 || len(res) > 2 {
		return nil, "", fmt.Errorf("redisstore: claim: unexpected reply %v", res)
	}
	scope, _ := res[0].(string)
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

// Finish implements grpcguard.Store.
func (s *Store) Finish(ctx context.Context, key string, claim, outcome []byte, ttl time.Duration) error {
	ctx, cancel := s.detached(ctx)
	defer cancel()
	n, err := finishScript.Run(ctx, s.rdb, []string{s.opts.Prefix + key}, claim, outcome, ttl.Milliseconds(), s.channel).Int()
	if err != nil {
		return fmt.Errorf("redisstore: finish: %w", err)
	}
	if n == 0 {
		return grpcguard.ErrClaimLost
	}
	return nil
}

// Release implements grpcguard.Store.
func (s *Store) Release(ctx context.Context, key string, claim []byte) error {
	ctx, cancel := s.detached(ctx)
	defer cancel()
	n, err := releaseScript.Run(ctx, s.rdb, []string{s.opts.Prefix + key}, claim, s.channel).Int()
	if err != nil {
		return fmt.Errorf("redisstore: release: %w", err)
	}
	if n == 0 {
		return grpcguard.ErrClaimLost
	}
	return nil
}

// Retention implements grpcguard.Store: Redis keeps keys for their TTL
// (given a maxmemory-policy that does not evict them).
func (s *Store) Retention(ttl time.Duration) time.Duration { return ttl }

// Wait implements grpcguard.Store: it wakes on the notification of Finish or
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

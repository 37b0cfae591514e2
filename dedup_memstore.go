package grpcguard

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of MemoryStoreConfig.
const (
	DefaultMemoryStoreMaxBytes   = 64 << 20
	DefaultMemoryStoreMaxEntries = 1 << 18
)

// memEntryOverhead is what an entry costs beyond its key and value: the entry
// struct, its map slot and list links, rounded up. MaxBytes counts it.
const memEntryOverhead = 128

// MemoryStoreConfig sizes a MemoryStore. Zero fields take their defaults;
// negative ones are invalid.
type MemoryStoreConfig struct {
	// MaxBytes bounds the bytes held: keys, values and memEntryOverhead (128)
	// per entry. Default 64 MiB, about 200,000 outcomes of small calls. When
	// full, the oldest finished outcomes are dropped first (counted as
	// evictions) and the store advertises the shorter retention; running
	// calls are never dropped: a claim that cannot fit fails with
	// ErrStoreFull.
	MaxBytes int64
	// MaxEntries bounds the number of ids held. Default 262,144.
	MaxEntries int
	// Metrics, if set, counts evictions.
	Metrics *DedupMetrics
}

// MemoryStore is the in-process Store, the default of UnaryServerDedup. It
// dedups the calls that reach this process only: behind a balancer with
// several replicas a resend may reach another one, which refuses it (its
// scope differs); use a shared store there (redisstore). A restart loses
// what it held, and the new store has a new scope.
//
// It is split into shards, each with its own lock and its share of the
// bounds, so that calls do not contend on one lock; the total never exceeds
// MaxBytes and MaxEntries. Safe for concurrent use.
type MemoryStore struct {
	scope  string
	seed   maphash.Seed
	shards []memShard
	mask   uint64
	m      *DedupMetrics

	// The most recent eviction of an id before its TTL: when and at what
	// age. Written only on eviction.
	evictedAt  atomic.Int64
	evictedAge atomic.Int64
}

type memShard struct {
	mu         sync.Mutex
	entries    map[string]*memEntry
	head, tail *memEntry // finished entries, oldest first; running claims are not listed
	bytes      int64
	maxBytes   int64
	maxEntries int
	_          [64]byte // keep shards' locks on separate cache lines
}

type memEntry struct {
	key        string
	value      []byte
	finished   int64 // nanotime of Finish; 0 while running
	expires    int64 // nanotime
	done       chan struct{}
	prev, next *memEntry
}

func (e *memEntry) size() int64 { return int64(len(e.key) + len(e.value) + memEntryOverhead) }

// NewMemoryStore returns a MemoryStore sized by cfg. It fails, with an error
// matching ErrInvalidOption, only for negative sizes.
func NewMemoryStore(cfg MemoryStoreConfig) (*MemoryStore, error) {
	switch {
	case cfg.MaxBytes < 0:
		return nil, invalid("MemoryStoreConfig.MaxBytes", cfg.MaxBytes, "must not be negative")
	case cfg.MaxEntries < 0:
		return nil, invalid("MemoryStoreConfig.MaxEntries", cfg.MaxEntries, "must not be negative")
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMemoryStoreMaxBytes
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMemoryStoreMaxEntries
	}
	// Fewer shards for small bounds, so that each shard holds a useful share.
	n := 32
	for n > 1 && (cfg.MaxEntries/n < 64 || cfg.MaxBytes/int64(n) < 64<<10) {
		n /= 2
	}
	var id [8]byte
	for i := range id {
		id[i] = byte(rand.Uint32())
	}
	s := &MemoryStore{
		scope:  "mem-" + hex.EncodeToString(id[:]),
		seed:   maphash.MakeSeed(),
		shards: make([]memShard, n),
		mask:   uint64(n - 1),
		m:      cfg.Metrics,
	}
	for i := range s.shards {
		s.shards[i] = memShard{
			entries:    make(map[string]*memEntry),
			maxBytes:   cfg.MaxBytes / int64(n),
			maxEntries: cfg.MaxEntries / n,
		}
	}
	return s, nil
}

func (s *MemoryStore) shard(key string) *memShard {
	return &s.shards[maphash.String(s.seed, key)&s.mask]
}

// MemoryStoreStats is a snapshot of a MemoryStore.
type MemoryStoreStats struct {
	Entries int   // ids held, running or finished
	Bytes   int64 // bytes counted against MaxBytes
}

// Stats returns the store's current size.
func (s *MemoryStore) Stats() MemoryStoreStats {
	var st MemoryStoreStats
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		st.Entries += len(sh.entries)
		st.Bytes += sh.bytes
		sh.mu.Unlock()
	}
	return st
}

// Scope returns the store's scope: "mem-" and 16 random hex digits.
func (s *MemoryStore) Scope() string { return s.scope }

// Claim implements Store.
func (s *MemoryStore) Claim(_ context.Context, key string, value []byte, ttl time.Duration) ([]byte, string, error) {
	sh := s.shard(key)
	now := nanotime()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.lookup(key, now); e != nil {
		return e.value, s.scope, nil
	}
	e := &memEntry{key: key, value: value, expires: now + int64(ttl)}
	if !s.makeRoom(sh, e.size(), 1, now) {
		return nil, s.scope, fmt.Errorf("%w: %d ids, %d bytes in this shard", ErrStoreFull, len(sh.entries), sh.bytes)
	}
	sh.entries[key] = e
	sh.bytes += e.size()
	return nil, s.scope, nil
}

// Finish implements Store. An outcome that cannot fit even after dropping
// every finished id of its shard fails with ErrStoreFull and leaves the claim
// in place.
func (s *MemoryStore) Finish(_ context.Context, key string, claim, outcome []byte, ttl time.Duration) error {
	sh := s.shard(key)
	now := nanotime()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.lookup(key, now)
	if e == nil || e.finished != 0 || !bytes.Equal(e.value, claim) {
		return ErrClaimLost
	}
	grow := int64(len(outcome) - len(e.value))
	if grow > 0 && !s.makeRoom(sh, grow, 0, now) {
		return fmt.Errorf("%w: outcome of %d bytes does not fit", ErrStoreFull, len(outcome))
	}
	sh.bytes += grow
	e.value, e.finished, e.expires = outcome, now, now+int64(ttl)
	sh.push(e)
	e.wake()
	return nil
}

// Release implements Store.
func (s *MemoryStore) Release(_ context.Context, key string, claim []byte) error {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.entries[key]
	if e == nil || e.finished != 0 || !bytes.Equal(e.value, claim) {
		return ErrClaimLost
	}
	sh.remove(e)
	return nil
}

// Wait implements Store: it blocks on a channel the entry closes when it
// changes.
func (s *MemoryStore) Wait(ctx context.Context, key string, running []byte) ([]byte, error) {
	sh := s.shard(key)
	for {
		sh.mu.Lock()
		e := sh.lookup(key, nanotime())
		if e == nil || !bytes.Equal(e.value, running) {
			sh.mu.Unlock()
			if e == nil {
				return nil, nil
			}
			return e.value, nil
		}
		if e.done == nil {
			e.done = make(chan struct{})
		}
		done := e.done
		sh.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Retention implements Store: ttl, or the age at which ids were last dropped
// early if that happened within the last ttl.
func (s *MemoryStore) Retention(ttl time.Duration) time.Duration {
	at := s.evictedAt.Load()
	if at == 0 || nanotime()-at > int64(ttl) {
		return ttl
	}
	return min(ttl, time.Duration(s.evictedAge.Load()))
}

// lookup returns the live entry of key, removing it if it expired. A running
// claim expires too: its owner stopped without finishing within the TTL.
func (sh *memShard) lookup(key string, now int64) *memEntry {
	e := sh.entries[key]
	if e != nil && now >= e.expires {
		sh.remove(e)
		return nil
	}
	return e
}

// makeRoom drops expired entries, then the oldest finished ones, until size
// more bytes and n more entries fit. Running claims are never dropped.
func (s *MemoryStore) makeRoom(sh *memShard, size int64, n int, now int64) bool {
	if size > sh.maxBytes {
		return false
	}
	for sh.bytes+size > sh.maxBytes || len(sh.entries)+n > sh.maxEntries {
		e := sh.head
		if e == nil {
			return false
		}
		if now < e.expires {
			s.evictedAt.Store(now)
			s.evictedAge.Store(now - e.finished)
			s.m.evicted()
		}
		sh.remove(e)
	}
	return true
}

func (sh *memShard) push(e *memEntry) {
	e.prev, e.next = sh.tail, nil
	if sh.tail != nil {
		sh.tail.next = e
	} else {
		sh.head = e
	}
	sh.tail = e
}

func (sh *memShard) remove(e *memEntry) {
	if e.finished != 0 {
		if e.prev != nil {
			e.prev.next = e.next
		} else {
			sh.head = e.next
		}
		if e.next != nil {
			e.next.prev = e.prev
		} else {
			sh.tail = e.prev
		}
		e.prev, e.next = nil, nil
	}
	delete(sh.entries, e.key)
	sh.bytes -= e.size()
	e.wake()
}

func (e *memEntry) wake() {
	if e.done != nil {
		close(e.done)
		e.done = nil
	}
}

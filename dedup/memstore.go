package dedup

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
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

// memEntryOverhead is what a running claim costs beyond its key and value:
// its map slot and struct, rounded up. MaxBytes counts it.
const memEntryOverhead = 128

// MemoryStoreConfig sizes a MemoryStore. Zero fields take their defaults;
// negative ones are invalid.
type MemoryStoreConfig struct {
	// MaxBytes bounds the bytes held: the segments outcomes are kept in
	// (one per shard is kept for reuse when dropped), the index of ids (16
	// bytes a slot, an eighth to half of them in use), and each running
	// claim's key, value and 128 bytes of overhead.
	// Default 64 MiB, about 200,000 outcomes of small calls. When full, the
	// oldest outcomes are dropped first, a segment of up to 64 KiB at a
	// time (counted as evictions), and the store advertises the shorter
	// retention, the time since the youngest outcome dropped in any shard
	// had finished (see Retention); running calls are never dropped: a
	// claim that cannot fit fails with ErrStoreFull.
	MaxBytes int64
	// MaxEntries bounds the number of ids held. Default 262,144.
	MaxEntries int
	// Metrics, if set, counts evictions.
	Metrics *Metrics
}

// MemoryStore is the in-process Store, the default of UnaryServerInterceptor. It
// dedups the calls that reach this process only: behind a balancer with
// several replicas a resend may reach another one, which refuses it (its
// scope differs); use a shared store there (redisstore). A restart loses
// what it held, and the new store has a new scope.
//
// It is split into shards, each with its own lock and its share of the
// bounds, so that calls do not contend on one lock; the total never exceeds
// MaxBytes and MaxEntries. Outcomes are appended to segments, byte slices
// indexed by a hash of their key, so that a store of a million outcomes is a
// few thousand objects without pointers: the garbage collector neither
// scans them nor is paced by allocating them one by one. Safe for concurrent
// use.
type MemoryStore struct {
	scope  string
	seed   maphash.Seed
	shards []memShard
	mask   uint64
	m      *Metrics

	// evictedHorizon is the latest time (nanotime, at least 1) at which an
	// outcome dropped before its TTL had finished, in any shard; 0: none
	// was. Every id dropped early finished at or before it, every id
	// finished after it is still held (or expired): see Retention. Written
	// only on eviction.
	evictedHorizon atomic.Int64
}

type memShard struct {
	mu sync.Mutex
	// index maps the hash of each key held to where its value is:
	// runningBit | a slot in claims, or segment seq<<32 | offset of its
	// outcome record (see seqMask).
	index  hashIndex
	claims []memClaim // running claims; free slots have no key
	free   []uint32
	segs   []*memSegment // oldest first; segs[i].seq == first+i
	first  uint64
	spare  []byte // a dropped segment's buffer, for the next segment
	bytes  int64  // segments' capacity and running claims
	// Bounds of this shard, and the size of its segments.
	maxBytes   int64
	maxEntries int
	segSize    int
	_          [64]byte // keep shards' locks on separate cache lines
}

const runningBit = 1 << 63

// seqMask keeps a segment's sequence number in an index value below
// runningBit: the number wraps, after 2^31 segments of a shard, and is read
// relative to the shard's first live segment, of which there are far
// fewer.
const seqMask = 1<<31 - 1

// memClaim is a running claim.
type memClaim struct {
	slot    uint32 // its index in claims
	key     string
	value   []byte // the caller's, unchanged until Finish or Release
	expires int64  // nanotime
	done    chan struct{}
}

func claimSize(key string, value []byte) int64 {
	return int64(len(key) + len(value) + memEntryOverhead)
}

// memSegment holds outcome records, appended in the order they finished:
//
//	length u32, key hash u64, finished i64, expires i64, key length u32, key, value
//
// The top bit of length marks a record dead: its id was dropped from the
// index before the segment (expired, or replaced), so that dropping the
// segment skips it.
type memSegment struct {
	seq     uint64
	buf     []byte
	expires int64 // latest expiry of its records
}

const (
	recHeader = 4 + 8 + 8 + 8 + 4
	recDead   = 1 << 31
)

// memRecord is a decoded record header.
type memRecord struct {
	dead              bool
	hash              uint64
	finished, expires int64
	key, value        []byte
	end               int
}

func readRecord(b []byte, off int) memRecord {
	h := b[off:]
	n := int(binary.LittleEndian.Uint32(h) &^ recDead)
	k := int(binary.LittleEndian.Uint32(h[28:]))
	return memRecord{
		dead:     binary.LittleEndian.Uint32(h)&recDead != 0,
		hash:     binary.LittleEndian.Uint64(h[4:]),
		finished: int64(binary.LittleEndian.Uint64(h[12:])),
		expires:  int64(binary.LittleEndian.Uint64(h[20:])),
		key:      h[recHeader : recHeader+k],
		value:    h[recHeader+k : n],
		end:      off + n,
	}
}

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
		limit := cfg.MaxBytes / int64(n)
		s.shards[i] = memShard{
			maxBytes:   limit,
			maxEntries: cfg.MaxEntries / n,
			segSize:    int(min(max(limit/16, 1<<10), 64<<10)),
		}
	}
	return s, nil
}

func (s *MemoryStore) shard(key string) (*memShard, uint64) {
	h := maphash.String(s.seed, key)
	return &s.shards[h&s.mask], h
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
		st.Entries += sh.live()
		st.Bytes += sh.used() + int64(cap(sh.spare))
		sh.mu.Unlock()
	}
	return st
}

// Scope returns the store's scope: "mem-" and 16 random hex digits.
func (s *MemoryStore) Scope() string { return s.scope }

// Claim implements Store. It keeps value, unchanged, until Finish or
// Release.
func (s *MemoryStore) Claim(_ context.Context, key string, value []byte, ttl time.Duration) ([]byte, string, error) {
	sh, h := s.shard(key)
	now := nanotime()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	cur, held, err := s.current(sh, key, h, now)
	if held || err != nil {
		return cur, s.scope, err
	}
	size := claimSize(key, value)
	buf, ok := s.makeRoom(sh, size+sh.index.growth(), 1, now)
	if !ok {
		return nil, s.scope, fmt.Errorf("%w: %d ids, %d bytes in this shard", ErrStoreFull, sh.live(), sh.used())
	}
	sh.keepSpare(buf)
	var i uint32
	if n := len(sh.free); n > 0 {
		i, sh.free = sh.free[n-1], sh.free[:n-1]
	} else {
		i = uint32(len(sh.claims))
		sh.claims = append(sh.claims, memClaim{})
	}
	sh.claims[i] = memClaim{slot: i, key: key, value: value, expires: now + int64(ttl)}
	sh.index.put(h, runningBit|uint64(i))
	sh.bytes += size
	return nil, s.scope, nil
}

// Finish implements Store: it copies outcome. An outcome that cannot fit even
// after dropping every outcome of its shard fails with ErrStoreFull and
// leaves the claim in place.
func (s *MemoryStore) Finish(_ context.Context, key string, claim, outcome []byte, ttl time.Duration) error {
	sh, h := s.shard(key)
	now := nanotime()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := sh.claim(key, h, now)
	if c == nil || !bytes.Equal(c.value, claim) {
		return ErrClaimLost
	}
	n := recHeader + len(key) + len(outcome)
	seg := sh.last()
	if seg == nil || len(seg.buf)+n > cap(seg.buf) {
		size := max(sh.segSize, n)
		buf, ok := s.makeRoom(sh, int64(size), 0, now)
		if !ok {
			return fmt.Errorf("%w: outcome of %d bytes does not fit", ErrStoreFull, len(outcome))
		}
		if cap(buf) != size {
			sh.keepSpare(buf)
			if buf = nil; size == sh.segSize && sh.spare != nil {
				buf, sh.spare = sh.spare, nil
			} else {
				buf = make([]byte, 0, size)
			}
		}
		seg = &memSegment{seq: sh.first + uint64(len(sh.segs)), buf: buf[:0]}
		sh.segs = append(sh.segs, seg)
		sh.bytes += int64(size)
	}
	off := len(seg.buf)
	b := binary.LittleEndian.AppendUint32(seg.buf, uint32(n))
	b = binary.LittleEndian.AppendUint64(b, h)
	b = binary.LittleEndian.AppendUint64(b, uint64(now))
	b = binary.LittleEndian.AppendUint64(b, uint64(now+int64(ttl)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(key)))
	b = append(append(b, key...), outcome...)
	seg.buf = b
	seg.expires = max(seg.expires, now+int64(ttl))
	sh.dropClaim(c)
	sh.index.put(h, seg.loc(off))
	return nil
}

// Release implements Store.
func (s *MemoryStore) Release(_ context.Context, key string, claim []byte) error {
	sh, h := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := sh.claim(key, h, math.MinInt64)
	if c == nil || !bytes.Equal(c.value, claim) {
		return ErrClaimLost
	}
	sh.dropClaim(c)
	sh.index.del(h)
	return nil
}

// Wait implements Store: it blocks on a channel the claim closes when it is
// finished or released, and wakes when the claim expires.
func (s *MemoryStore) Wait(ctx context.Context, key string, running []byte) ([]byte, error) {
	sh, h := s.shard(key)
	for {
		now := nanotime()
		sh.mu.Lock()
		c := sh.claim(key, h, now)
		if c == nil || !bytes.Equal(c.value, running) {
			cur, _, err := s.current(sh, key, h, now)
			sh.mu.Unlock()
			return cur, err
		}
		if c.done == nil {
			c.done = make(chan struct{})
		}
		done, wait := c.done, time.Duration(c.expires-now)
		sh.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-done:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t.Stop()
	}
}

// Retention implements Store: ttl, or, if outcomes were dropped before
// their TTL, the time since the latest of them had finished, if shorter.
//
// Why that and not the age of the last ids dropped: shards drop outcomes
// independently, at ages that differ from shard to shard and from drop to
// drop. A shard that dropped a 5ms-old outcome, followed by one that dropped
// 650ms-old ones, made "the last drop's age" 650ms, and a resend of the
// first, 30ms old, passed and ran again (issue 18). An id dropped early
// finished at or before the horizon, so a resend of it is at least now minus
// the horizon old (its first attempt began before it finished), and is
// refused; an id finished after the horizon was never dropped early.
func (s *MemoryStore) Retention(ttl time.Duration) time.Duration {
	h := s.evictedHorizon.Load()
	if h == 0 {
		return ttl
	}
	return min(ttl, time.Duration(nanotime()-h))
}

// errHashCollision fails a claim whose key has the 64-bit hash of another
// key running in the same shard: a chance of about n/2^64 with n claims
// running, failed closed rather than handled.
var errHashCollision = errors.New("grpcguard: memory store: another running request id has the same hash")

// current returns what key holds at now, and whether it holds anything:
// its running claim, or a copy of its outcome (the segment may be reused
// once the lock is released). What expired is dropped; an outcome of
// another key with the same hash is dropped too, as an early eviction, so
// that the key may be claimed.
func (s *MemoryStore) current(sh *memShard, key string, h uint64, now int64) ([]byte, bool, error) {
	loc, ok := sh.index.get(h)
	switch {
	case !ok:
		return nil, false, nil
	case loc&runningBit != 0:
		c := &sh.claims[uint32(loc)]
		if c.key != key {
			return nil, false, errHashCollision
		}
		if now >= c.expires {
			sh.dropClaim(c)
			sh.index.del(h)
			return nil, false, nil
		}
		return c.value, true, nil
	}
	r := sh.record(loc)
	if now >= r.expires {
		sh.unindex(h, loc)
		return nil, false, nil
	}
	if string(r.key) != key {
		sh.unindex(h, loc)
		s.m.evicted()
		s.evictedEarly(r.finished)
		return nil, false, nil
	}
	return bytes.Clone(r.value), true, nil
}

// claim returns the running claim of key, or nil; one that expired before
// now is dropped: its owner stopped without finishing within the TTL.
func (sh *memShard) claim(key string, h uint64, now int64) *memClaim {
	loc, ok := sh.index.get(h)
	if !ok || loc&runningBit == 0 {
		return nil
	}
	c := &sh.claims[uint32(loc)]
	if c.key != key {
		return nil
	}
	if now >= c.expires {
		sh.dropClaim(c)
		sh.index.del(h)
		return nil
	}
	return c
}

// dropClaim frees the slot of the running claim c, waking its waiters, and
// leaves its index entry to the caller.
func (sh *memShard) dropClaim(c *memClaim) {
	i := c.slot
	sh.bytes -= claimSize(c.key, c.value)
	if c.done != nil {
		close(c.done)
	}
	*c = memClaim{}
	sh.free = append(sh.free, i)
}

func (sh *memShard) last() *memSegment {
	if len(sh.segs) == 0 {
		return nil
	}
	return sh.segs[len(sh.segs)-1]
}

// loc is the index value of the record at off in seg.
func (seg *memSegment) loc(off int) uint64 { return (seg.seq&seqMask)<<32 | uint64(off) }

// segOf returns the live segment of the index value loc.
func (sh *memShard) segOf(loc uint64) *memSegment {
	return sh.segs[(loc>>32-sh.first)&seqMask]
}

// record reads the outcome record at loc, in a segment not dropped.
func (sh *memShard) record(loc uint64) memRecord {
	return readRecord(sh.segOf(loc).buf, int(uint32(loc)))
}

// unindex drops h, whose outcome is at loc in a segment not dropped, from the
// index, and marks the record dead.
func (sh *memShard) unindex(h, loc uint64) {
	sh.index.del(h)
	b := sh.segOf(loc).buf[uint32(loc):]
	binary.LittleEndian.PutUint32(b, binary.LittleEndian.Uint32(b)|recDead)
}

// live is the number of ids held, running or finished.
func (sh *memShard) live() int { return sh.index.n }

// used is the bytes counted against MaxBytes, but for the spare segment.
func (sh *memShard) used() int64 { return sh.bytes + sh.index.bytes() }

// keepSpare keeps buf, a dropped segment's buffer (or nil), for the next
// segment if it has the common size and no other is kept: a fresh one
// would be zeroed by the allocator and add to the collector's pace.
// makeRoom leaves room for it.
func (sh *memShard) keepSpare(buf []byte) {
	if sh.spare == nil && buf != nil && cap(buf) == sh.segSize {
		sh.spare = buf[:0]
	}
}

// makeRoom drops segments whose outcomes all expired, then the oldest ones,
// until size more bytes and n more entries fit, leaving room for a spare
// segment. Running claims are never dropped. It returns a dropped segment's
// buffer for reuse (see keepSpare), or nil.
func (s *MemoryStore) makeRoom(sh *memShard, size int64, n int, now int64) (reuse []byte, ok bool) {
	drop := func() {
		if buf := s.dropSegment(sh, now); reuse == nil {
			reuse = buf
		} else {
			sh.keepSpare(buf)
		}
	}
	for len(sh.segs) > 0 && sh.segs[0].expires <= now {
		drop()
	}
	for sh.used()+size+int64(sh.segSize) > sh.maxBytes || sh.live()+n > sh.maxEntries {
		if len(sh.segs) == 0 {
			return nil, false
		}
		drop()
	}
	return reuse, true
}

// dropSegment drops the oldest segment and the index entries of its live
// outcomes, counting those dropped before their TTL, and returns its
// buffer. The records are read in order; the deletes, independent of each
// other, overlap their cache misses.
func (s *MemoryStore) dropSegment(sh *memShard, now int64) []byte {
	seg := sh.segs[0]
	youngest := int64(0)
	for off := 0; off < len(seg.buf); {
		r := readRecord(seg.buf, off)
		if !r.dead {
			if i, ok := sh.index.slot(r.hash); ok && sh.index.slots[i].v == seg.loc(off) {
				sh.index.delAt(i)
				if now < r.expires {
					s.m.evicted()
					youngest = max(youngest, r.finished)
				}
			}
		}
		off = r.end
	}
	if youngest != 0 {
		s.evictedEarly(youngest)
	}
	sh.bytes -= int64(cap(seg.buf))
	sh.segs[0] = nil
	sh.segs = sh.segs[1:]
	sh.first++
	return seg.buf
}

// evictedEarly records that an outcome finished at finished was dropped
// before its TTL: the store's retention is now at most the time since then.
func (s *MemoryStore) evictedEarly(finished int64) {
	finished = max(finished, 1)
	for {
		h := s.evictedHorizon.Load()
		if h >= finished || s.evictedHorizon.CompareAndSwap(h, finished) {
			return
		}
	}
}

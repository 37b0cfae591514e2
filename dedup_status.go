package grpcguard

import (
	"sort"
	"sync/atomic"
	"time"
)

// DedupStatus reports what one DialOptions client has learned of its
// servers' deduplication from their DedupHeader: which methods it may
// resend on its strength, and which replicas advertised which store. Make
// one with NewDedupStatus and pass it with WithDedupStatus to one
// DialOptions call (one client: what a client learns is per target). Safe
// for concurrent use.
type DedupStatus struct {
	k *dedupKnowledge
}

// NewDedupStatus returns a DedupStatus for WithDedupStatus.
func NewDedupStatus() *DedupStatus {
	k := newDedupKnowledge()
	k.status = true
	return &DedupStatus{k: k}
}

// WithDedupStatus makes the DialOptions client learn into s, so that s
// reports what it learned. Given to one DialOptions call only; elsewhere (a
// hand-composed interceptor, which sends no request ids) it changes
// nothing. nil is invalid.
func WithDedupStatus(s *DedupStatus) ClientOption {
	return clientOption(func(c *config) error {
		if s == nil {
			return invalid("WithDedupStatus", "nil", "must not be nil")
		}
		c.dedupStatus = s
		return nil
	})
}

// MethodDedup is what a client knows of one method's deduplication.
type MethodDedup struct {
	// Learned: a response advertised that the server deduplicates the
	// method, and no successful response without the advert denied it
	// since. Calls of the method then carry request ids, and a call that
	// may have run is resent after the dedup service answered for it.
	Learned bool
	// LastAdvertised is when a response last advertised it; zero: never.
	LastAdvertised time.Time
	// DeniedUntil, when not zero, is until when a successful response
	// without the advert (a replica without deduplication) stops resends.
	DeniedUntil time.Time
	// Replicas are the replicas that advertised deduplication, of any
	// method, most recent first.
	Replicas []ReplicaDedup
}

// ReplicaDedup is what one replica (peer address) advertised.
type ReplicaDedup struct {
	Addr           string
	Scope          string        // its store's scope
	Retention      time.Duration // how long its store keeps ids, as advertised
	LastAdvertised time.Time
	// MixedUntil, when not zero, is until when resends through this
	// address stop: two scopes were seen there (several processes with
	// their own stores behind one address).
	MixedUntil time.Time
}

// Method returns what the client knows now of fullMethod
// ("/pkg.Service/Method").
func (s *DedupStatus) Method(fullMethod string) MethodDedup {
	now := nanotime()
	wall := time.Now()
	at := func(ns int64) time.Time {
		if ns == 0 {
			return time.Time{}
		}
		return wall.Add(time.Duration(ns - now))
	}
	var md MethodDedup
	if m := s.k.method(fullMethod, false); m != nil {
		seen, denied := m.seen.Load(), m.deniedUntil.Load()
		md.Learned = seen != 0 && now >= denied
		md.LastAdvertised = at(seen)
		if now < denied {
			md.DeniedUntil = at(denied)
		}
	}
	s.k.mu.Lock()
	for a, p := range s.k.peers {
		r := ReplicaDedup{Addr: a, Scope: p.scope, Retention: time.Duration(p.ttl), LastAdvertised: at(p.seen)}
		if now < p.mixedUntil {
			r.MixedUntil = at(p.mixedUntil)
		}
		md.Replicas = append(md.Replicas, r)
	}
	s.k.mu.Unlock()
	sort.Slice(md.Replicas, func(i, j int) bool { return md.Replicas[i].LastAdvertised.After(md.Replicas[j].LastAdvertised) })
	return md
}

// dialed reports whether a DialOptions client learns into k: a knowledge
// made for a DedupStatus is only once DialOptions has taken it.
func (k *dedupKnowledge) dialed() bool { return !k.status || k.taken.Load() }

// statusKnowledge is the part of dedupKnowledge DedupStatus needs.
type statusKnowledge struct {
	status bool        // made by NewDedupStatus
	taken  atomic.Bool // DialOptions took it
}

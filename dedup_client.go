package grpcguard

import (
	"context"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpcguard/grpcguard/internal/wire"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// What a client knows about its target's deduplication, and the one question
// the safety decision asks of it: may a call whose request may have reached
// the server be resent, because the server will run it at most once?
//
// It is learned from facts of this client's own calls, never assumed: the
// DedupHeader of responses, per method and per replica (peer address), or
// declared by hand (WithServerDedup). A resend then names, in its request
// id's parameters, the store scope of the replica the earlier attempt went to, and its age;
// the replica the resend reaches answers from its store, or refuses when its
// store cannot have seen the first attempt (another scope, or older than it
// keeps ids). A resend relying on learned deduplication is sent only after
// the dedup service, reached through the same channel, answered for its id
// (dedup_lookup.go): the replica the resend reaches may not be the one that
// advertised. So a stale or wrong belief here costs a failed call, not a
// second execution, with one exception documented on observe.

const (
	// dedupObserveEvery is how often, per method, a call reads the response
	// metadata to learn (a few allocations each): every call would cost them
	// on every call; once in a while keeps the knowledge fresh.
	dedupObserveEvery = 100 * time.Millisecond
	// dedupMaxMethods and dedupMaxPeers bound what one client remembers.
	dedupMaxMethods = 1024
	dedupMaxPeers   = 256
	// dedupWindowShare is the share of the advertised retention within which
	// a resend is sent, leaving the rest for the resend's own way to the
	// server.
	dedupWindowShare = 0.9
)

// dedupKnowledge is what one client (one DialOptions result, so one target)
// learned. Safe for concurrent use.
type dedupKnowledge struct {
	methods  sync.Map // full method -> *methodDedup
	nMethods atomic.Int32

	mu    sync.Mutex
	peers map[string]*peerDedup // peer address -> its advertised store

	statusKnowledge
}

func newDedupKnowledge() *dedupKnowledge {
	return &dedupKnowledge{peers: make(map[string]*peerDedup)}
}

// methodDedup is what is known of one method.
type methodDedup struct {
	due         atomic.Int64 // nanotime from which the next call observes
	seen        atomic.Int64 // nanotime of the last response that advertised dedup; 0: never
	deniedUntil atomic.Int64 // nanotime until which a response without it denies
}

// peerDedup is the store one replica advertised.
type peerDedup struct {
	scope      string
	ttl        int64 // retention, ns
	seen       int64 // nanotime
	mixedUntil int64 // two scopes seen at one address (several processes behind it): no resend until then
}

func (k *dedupKnowledge) method(name string, create bool) *methodDedup {
	if v, ok := k.methods.Load(name); ok {
		return v.(*methodDedup)
	}
	if !create || k.nMethods.Load() >= dedupMaxMethods {
		return nil
	}
	v, loaded := k.methods.LoadOrStore(name, new(methodDedup))
	if !loaded {
		k.nMethods.Add(1)
	}
	return v.(*methodDedup)
}

// want says what a call of method needs at now: learned, the server was
// seen deduplicating the method and has not denied it since (the call
// carries an id); observe, this call reads its response metadata to learn
// (at most once per dedupObserveEvery per method; it carries an id too, or
// the server would not advertise).
func (k *dedupKnowledge) want(method string, now int64) (learned, observe bool) {
	m := k.method(method, true)
	if m == nil {
		return false, false
	}
	learned = m.seen.Load() != 0 && now >= m.deniedUntil.Load()
	d := m.due.Load()
	observe = now >= d && m.due.CompareAndSwap(d, now+int64(dedupObserveEvery))
	return learned, observe
}

// observe learns from one call's response: its header and trailer (an error
// response carries DedupHeader in the trailer), the address of the replica
// that answered, and whether the call succeeded. A successful response
// without DedupHeader comes from a server that does not deduplicate the
// method (a replica not yet upgraded): the method is then denied for the
// longest retention seen. A failed one proves nothing: the failure may not
// come from the server at all.
//
// The exception to "a wrong belief costs a failed call": several processes
// with memory stores behind one address (an L4 load balancer) look like one
// replica whose scope changes; until two scopes have been seen there, a
// resend may reach the process that did not run the first attempt and whose
// store has the scope this client saw. Use a shared store (redisstore) for
// such servers.
func (k *dedupKnowledge) observe(method string, addr net.Addr, header, trailer metadata.MD, ok bool, now int64) {
	m := k.method(method, true)
	if m == nil {
		return
	}
	adv, found := wire.ParseAdvert(header)
	if !found {
		adv, found = wire.ParseAdvert(trailer)
	}
	if !found {
		if ok {
			m.deniedUntil.Store(now + int64(wire.DefaultTTL))
		}
		return
	}
	m.seen.Store(now)
	if addr == nil {
		return
	}
	a := addr.String()
	k.mu.Lock()
	defer k.mu.Unlock()
	p := k.peers[a]
	if p == nil {
		if len(k.peers) >= dedupMaxPeers {
			k.forgetOldestLocked()
		}
		p = &peerDedup{}
		k.peers[a] = p
	}
	if p.scope != "" && p.scope != adv.Scope && now-p.seen < p.ttl {
		p.mixedUntil = now + max(p.ttl, int64(adv.TTL))
	}
	p.scope, p.ttl, p.seen = adv.Scope, int64(adv.TTL), now
}

func (k *dedupKnowledge) forgetOldestLocked() {
	var oldest string
	var at int64
	for a, p := range k.peers {
		if oldest == "" || p.seen < at {
			oldest, at = a, p.seen
		}
	}
	delete(k.peers, oldest)
}

// dedupCover is what a resend of one call relies on, accumulated over the
// attempts of the call that may have reached a server (record). The zero
// value is a call none of whose attempts may have run.
type dedupCover struct {
	used  bool   // an attempt may have run under deduplication: a resend needs it
	scope string // the store scope every such attempt's replica advertised; "" when declared by hand
	first int64  // nanotime at which the first such attempt began
	// window is the shortest retention advertised for those attempts.
	window int64
	// exposed: an attempt may have run under no deduplication, or under
	// another store than the first: no resend of the call can be safe.
	exposed bool
	// fence is the token of the fence the dedup service claimed for the
	// resend (learned dedup only; see lookupBeforeResend), in hex.
	fence string
}

// dedupScope says under which store a call of method that reached the
// replica at peer is deduplicated, as known at now: the scope and retention
// that very replica advertised and has not denied since, or, for a method
// declared with WithServerDedup, scope "" and dedup.DefaultTTL. ok is false
// when nothing says the server deduplicates the call, and always without
// request ids.
//
// It is the only place that says whether a server deduplicates a call; the
// after-failure step asks it for attempts that may have reached the server
// of a method that is not idempotent.
func (cs *clientState) dedupScope(method string, peer net.Addr, now int64) (scope string, window int64, ok bool) {
	if cs.cfg.requestIDsOff || cs.rt.dedup == nil || !cs.rt.dedup.dialed() {
		// Only DialOptions puts request ids on calls, and it alone makes
		// the knowledge: interceptors composed by hand send no id, and a
		// resend without one would run again.
		return "", 0, false
	}
	if scope, window, ok = cs.rt.dedup.lookup(method, peer, now); ok {
		return scope, window, true
	}
	if cs.cfg.serverDedup == nil || !cs.cfg.serverDedup.contains(method) {
		return "", 0, false
	}
	return "", int64(wire.DefaultTTL), true
}

// record adds to the cover an attempt that began at start and may have run:
// under the store scope with retention window, or, without ok, under none.
func (cover *dedupCover) record(scope string, window int64, ok bool, start int64) {
	switch {
	case !ok:
		cover.exposed = true
	case !cover.used:
		cover.used, cover.scope, cover.window, cover.first = true, scope, window, start
	case cover.scope != scope:
		cover.exposed = true // two attempts may have run under different stores
	default:
		cover.window = min(cover.window, window)
	}
}

// covers reports whether the server's deduplication makes a resend safe at
// now: every attempt of the call that may have run did so under one store,
// and the first of them began well within the retention it advertised, so
// the resend reaches the store while it still keeps the id. resendAttempt
// then marks the resend.
func (cover *dedupCover) covers(now int64) bool {
	return cover.used && !cover.exposed && float64(now-cover.first) < dedupWindowShare*float64(cover.window)
}

// lookup returns the scope and retention the replica at peer advertised for
// method, when that is still current.
func (k *dedupKnowledge) lookup(method string, peer net.Addr, now int64) (scope string, window int64, ok bool) {
	if k == nil || peer == nil {
		return "", 0, false
	}
	m := k.method(method, false)
	if m == nil {
		return "", 0, false
	}
	seen := m.seen.Load()
	if seen == 0 || now < m.deniedUntil.Load() {
		return "", 0, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	p := k.peers[peer.String()]
	if p == nil || now < p.mixedUntil || now-p.seen >= p.ttl || now-seen >= p.ttl {
		return "", 0, false
	}
	return p.scope, p.ttl, true
}

// resendAttempt prepares a resend that relies on deduplication: it returns
// ctx without the request id, and a call option whose per-RPC credentials
// write the id back, with the scope of the call's first attempt that may
// have run and its age, when grpc builds the resend's headers.
//
// Why there: the server judges the resend by its age (a store that does not
// know the id refuses a resend older than it keeps ids), so the age must be
// the one at which the resend left, not the one at which it was decided.
// grpc asks per-RPC credentials for their metadata in the transport's
// NewStream, after the pick, so after any wait for a connection (grpc's
// connect timeout is 20s) and for the balancer; stamped before invoke, a
// resend held 1.5s for a new connection said "0 ms" to a store that had
// dropped the id after 1s, and ran again (issue 18). What comes after the
// stamp is the wait for a stream slot on a server that caps concurrent
// streams (grpc-go servers do not by default) and the network; the first
// attempt's own way to the server and its handler's run lie between the
// first attempt's start and the outcome's store time, and cover them.
// The age is rounded up to the microsecond, never down.
//
// The caller's own per-RPC credentials call option, if any, is kept: the
// returned one asks it first and adds the id to its metadata.
func (cover *dedupCover) resendAttempt(ctx context.Context, opts []grpc.CallOption) (context.Context, grpc.CallOption) {
	md, _ := metadata.FromOutgoingContext(ctx) // a copy
	c := &resendCreds{scope: cover.scope, first: cover.first, fence: cover.fence}
	if vs := md[RequestIDHeader]; len(vs) == 1 {
		c.id = wire.RewriteID(vs[0], "resend-", "")
	}
	delete(md, RequestIDHeader)
	for _, o := range opts {
		if pc, ok := o.(grpc.PerRPCCredsCallOption); ok {
			c.inner = pc.Creds // grpc applies the last one
		}
	}
	return metadata.NewOutgoingContext(ctx, md), grpc.PerRPCCredentials(c)
}

// resendCreds writes a resend's RequestIDHeader when grpc builds its headers
// (see resendAttempt).
type resendCreds struct {
	id    string // the id and its parameters but the resend's; "": none
	scope string
	first int64 // nanotime at which the first attempt that may have run began
	fence string
	inner credentials.PerRPCCredentials
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (c *resendCreds) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	if c.id == "" {
		// Cannot happen (a resend relies on deduplication only with an
		// id); never send it without one, which would run it again.
		return nil, status.Error(codes.Internal, "grpcguard: a resend relying on deduplication lost its request id")
	}
	md := make(map[string]string, 1)
	if c.inner != nil {
		im, err := c.inner.GetRequestMetadata(ctx, uri...)
		if err != nil {
			return nil, err
		}
		maps.Copy(md, im) // the caller's map may be shared: not written
	}
	md[RequestIDHeader] = c.id + wire.ResendParams(c.scope, nanotime()-c.first, c.fence)
	return md, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: as the
// caller's credentials require; the id itself needs no security.
func (c *resendCreds) RequireTransportSecurity() bool {
	return c.inner != nil && c.inner.RequireTransportSecurity()
}

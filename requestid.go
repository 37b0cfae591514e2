package grpcguard

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"sync"

	"github.com/grpcguard/grpcguard/internal/wire"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Request ids: a unary call of a DialOptions client carries RequestIDHeader
// where it can matter (see WithRequestIDs), put on the call once, by the
// outermost interceptor, so that every attempt and hedge of the call sends
// the same id and every call a new one.

// idsPerBatch ids are drawn from crypto/rand at once and hex-encoded into one
// string that the ids slice: one read of the system's generator and one
// allocation per 64 calls instead of per call (a crypto/rand.Read of 16
// bytes costs as much as the rest of the id).
const idsPerBatch = 64

type idBatch struct {
	s    string // idsPerBatch ids, 32 hex digits each
	next int
	raw  [idsPerBatch * 16]byte
	hex  [idsPerBatch * 32]byte
}

// idBatches is per P (sync.Pool), so that calls share no lock. A batch dropped
// by the garbage collector loses its unused ids, which are never reused.
var idBatches = sync.Pool{New: func() any { return new(idBatch) }}

// newRequestID returns 128 bits from crypto/rand as 32 lowercase hex digits.
func newRequestID() string {
	b := idBatches.Get().(*idBatch)
	if b.next == 0 {
		_, _ = crand.Read(b.raw[:]) // never fails (Go 1.24+: it crashes the program rather)
		hex.Encode(b.hex[:], b.raw[:])
		b.s = string(b.hex[:])
	}
	id := b.s[b.next*32 : (b.next+1)*32]
	b.next = (b.next + 1) % idsPerBatch
	idBatches.Put(b)
	return id
}

// requestIDs is the interceptor that puts ids on calls and, now and then,
// reads a response to learn whether the server deduplicates.
type requestIDs struct {
	cfg   config
	dedup *dedupKnowledge // where it learns; nil: it never reads a response
}

// newRequestIDs returns the request-id interceptor of a client configured by
// cfg, learning into rt's knowledge.
func newRequestIDs(cfg config, rt *clientRuntime) *requestIDs {
	return &requestIDs{cfg: cfg, dedup: rt.dedup}
}

// withID returns ctx with a new request id, unless the caller set one; with
// advertise, the id asks the server for DedupHeader.
func withID(ctx context.Context, advertise bool) context.Context {
	if len(metadata.ValueFromOutgoingContext(ctx, RequestIDHeader)) > 0 {
		if advertise {
			return withIDParams(ctx, "advertise", wire.Advertise)
		}
		return ctx
	}
	id := newRequestID()
	if advertise {
		id += wire.Advertise // one call per method per dedupObserveEvery
	}
	return metadata.AppendToOutgoingContext(ctx, RequestIDHeader, id)
}

// withIDParams returns ctx whose RequestIDHeader keeps its id and its
// parameters but those starting with drop, and gains add. It copies the
// outgoing metadata: for the rare calls that learn.
func withIDParams(ctx context.Context, drop, add string) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	vs := md[RequestIDHeader]
	if len(vs) != 1 {
		return ctx
	}
	md[RequestIDHeader] = []string{wire.RewriteID(vs[0], drop, add)}
	return metadata.NewOutgoingContext(ctx, md)
}

func (r *requestIDs) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if r.cfg.requestIDsOff {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	id, observe := r.cfg.requestIDsAll, false
	if k := r.dedup; k != nil {
		var learned bool
		learned, observe = k.want(method, nanotime())
		id = id || learned || observe
	}
	if !id && r.cfg.serverDedup != nil && r.cfg.serverDedup.contains(method) {
		id = true
	}
	if id {
		ctx = withID(ctx, observe)
	}
	if observe {
		return observeCall(ctx, r.dedup, method, req, reply, cc, invoker, opts)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// observeCall makes the call reading its response metadata and peer, and
// learns from them.
func observeCall(ctx context.Context, k *dedupKnowledge, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	var o struct {
		header, trailer metadata.MD
		peer            peer.Peer
	}
	all := make([]grpc.CallOption, 0, len(opts)+3)
	all = append(append(all, opts...), grpc.Header(&o.header), grpc.Trailer(&o.trailer), grpc.Peer(&o.peer))
	err := invoker(ctx, method, req, reply, cc, all...)
	k.observe(method, o.peer.Addr, o.header, o.trailer, err == nil, nanotime())
	return err
}

// hasRequestID reports whether the call of ctx carries a request id: a
// resend relies on deduplication only then.
func hasRequestID(ctx context.Context) bool {
	return len(metadata.ValueFromOutgoingContext(ctx, RequestIDHeader)) == 1
}

package dedup

import (
	"context"

	"github.com/grpcguard/grpcguard/internal/wire"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The dedup service answers a client's lookup before a resend that relies
// on deduplication it learned from one replica's AdvertHeader: the replica
// the resend reaches may not be that one, and may not deduplicate at all
// (issue 18, item 2). Only servers that registered the service answer; one
// without it answers Unimplemented, and the client does not resend. Under
// the call's id and fingerprint, in its store, the service:
//
//   - finds the outcome: it returns it, and the client returns it to the
//     caller with no resend at all (the common lost reply);
//   - finds the id running: it waits for its outcome, then returns it;
//   - finds nothing: it refuses as it would refuse the resend (another
//     scope, older than the store keeps ids, a store that lost ids), or
//     claims the id with a fence: a claim with a token the client chose, so
//     that a lookup whose answer was lost can be asked again and the fence
//     is re-issued. The resend carries the token; a server whose store holds
//     the fence runs the call under it, and a first attempt arriving late
//     waits for that outcome instead of running.

// LookupMethod is the full name of the dedup service's one method
// (see Server.RegisterService). Its request and response are
// google.protobuf.BytesValue in grpcguard's own encoding; only grpcguard
// clients call it.
const LookupMethod = wire.LookupMethod

// Server is UnaryServerInterceptor's interceptor together with the dedup
// service, sharing one store and one configuration. Safe for concurrent use.
type Server struct {
	d *deduper
}

// NewServer returns the interceptor and service of a server that
// deduplicates with store (nil: a new MemoryStore) as configured by opts; see
// UnaryServerInterceptor.
func NewServer(store Store, opts ...Option) *Server {
	return &Server{newDeduper(store, opts)}
}

// UnaryServerInterceptor returns the interceptor; see the function
// UnaryServerInterceptor.
func (s *Server) UnaryServerInterceptor() grpc.UnaryServerInterceptor { return s.d.unary }

// RegisterService registers the dedup service (LookupMethod) on r.
// Clients that learned deduplication from a server's AdvertHeader resend a
// call that may have run only after this service, on the replica their
// lookup reaches, has answered for the call's id: register it on every
// server that installs the interceptor.
func (s *Server) RegisterService(r grpc.ServiceRegistrar) {
	r.RegisterService(&grpc.ServiceDesc{
		ServiceName: wire.LookupService,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: wire.LookupMethodName,
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.BytesValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				return s.d.lookup(ctx, in)
			},
		}},
	}, s)
}

// lookup serves LookupMethod: the request's RequestIDHeader is the
// call's id with its resend parameters, its body the call's fingerprint.
func (d *deduper) lookup(ctx context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
	if d.err != nil {
		return nil, d.err
	}
	ids := metadata.ValueFromIncomingContext(ctx, RequestIDHeader)
	if len(ids) != 1 {
		return nil, status.Errorf(codes.InvalidArgument, "grpcguard: dedup lookup: %s must be one value", RequestIDHeader)
	}
	key, p, err := wire.ParseRequestID(ids[0])
	if err != nil {
		return nil, err
	}
	if !p.Resend || !p.Fenced || len(in.GetValue()) != wire.FPLen {
		return nil, status.Errorf(codes.InvalidArgument, "grpcguard: dedup lookup: want a resend's id with its fence, and a %d-byte wire.Fingerprint", wire.FPLen)
	}
	if d.cfg.key != nil {
		if key, err = d.cfg.key(ctx, key); err != nil {
			return nil, status.Convert(err).Err()
		}
	}
	var fp wire.Fingerprint
	copy(fp[:], in.GetValue())
	fence := make([]byte, wire.ClaimLen) // the store may keep it: not reused
	wire.FenceClaim(fence, fp, p.Fence)
	for range maxClaimRounds {
		existing, scope, err := d.store.Claim(ctx, key, fence, d.cfg.ttl)
		if err != nil {
			d.storeFailed(ctx, LookupMethod, opClaim, err, false)
			return nil, status.Errorf(codes.Unavailable, "grpcguard: dedup store: %v", err)
		}
		if string(existing) == string(fence) { // an earlier lookup's, whose answer was lost
			return &wrapperspb.BytesValue{Value: wire.LookupFencedReply(fence)}, nil
		}
		if existing == nil {
			if code, why := d.refusal(ctx, LookupMethod, p, scope); why != "" {
				d.release(ctx, LookupMethod, key, fence, false)
				d.cfg.metrics.refuse()
				d.outcome(ctx, LookupMethod, OutcomeRefused)
				return nil, status.Errorf(code, "grpcguard: resend of request id refused: %s", why)
			}
			return &wrapperspb.BytesValue{Value: wire.LookupFencedReply(fence)}, nil
		}
		rec, raw, _, err := d.awaitOutcome(ctx, LookupMethod, key, existing, fp)
		if err != nil {
			return nil, err
		}
		if rec.Done {
			d.cfg.metrics.answer()
			d.outcome(ctx, LookupMethod, OutcomeAnswered)
			return &wrapperspb.BytesValue{Value: wire.LookupOutcomeReply(raw)}, nil
		}
		// released or expired: claim it again
	}
	return nil, status.Errorf(codes.Aborted, "grpcguard: request id claimed and released %d times", maxClaimRounds)
}

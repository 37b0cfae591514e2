package grpcguard

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The positive check before a resend (issue 18, item 2). What a client
// learned from one replica's DedupHeader says nothing of the replica a
// resend reaches: behind pick_first over [A with dedup, B without], A runs
// the call and dies before replying, the resend fails over to B, which
// ignores the id and runs it again. Metadata cannot prevent it, since B
// ignores metadata. So before a resend that relies on learned deduplication
// the client calls DedupLookupMethod, a method only servers that registered
// the dedup service have; a server without it answers Unimplemented, and the
// client does not resend. A server with it, under the call's id and
// fingerprint, in its store:
//
//   - finds the outcome: it returns it, and the client returns it to the
//     caller with no resend at all (the common lost reply);
//   - finds the id running: it waits for its outcome, then returns it;
//   - finds nothing: it refuses as it would refuse the resend (another
//     scope, older than the store keeps ids, a store that lost ids), or
//     claims the id with a fence, a claim with a token the client chose
//     (so that a lookup whose answer was lost can be asked again: the fence
//     is re-issued). The client then resends with the token; a dedup server whose store holds
//     the fence runs the call under it, and a first attempt arriving late
//     waits for that outcome instead of running. The resend may reach a
//     replica without dedup, which runs it: the first attempt never claimed
//     the id in the store the client learned it ran under, so it never ran
//     there, and cannot run there later while the fence stands (the TTL).
//
// A client that declared deduplication (WithServerDedup) does not ask: the
// declaration is the operator's promise that every replica deduplicates
// with one store.

// DedupLookupMethod is the full name of the dedup service's one method
// (see ServerDedup.RegisterService). Its request and response are
// google.protobuf.BytesValue in grpcguard's own encoding; only grpcguard
// clients call it.
const DedupLookupMethod = "/grpcguard.dedup.v1.Dedup/Lookup"

// lookupTries bounds the lookups of one resend that fail with Unavailable
// (the connection broke).
const lookupTries = 5

// lookupPause is the pause before a lookup is asked again after an
// Unavailable whose connection did not die, times the tries so far.
const lookupPause = 5 * time.Millisecond

// Lookup answers.
const (
	lookupOutcome = 'O' // followed by the outcome record
	lookupFenced  = 'F' // followed by the fence's token
)

// ServerDedup is UnaryServerDedup's interceptor together with the dedup
// service, sharing one store and one configuration. Safe for concurrent use.
type ServerDedup struct {
	d *deduper
}

// NewServerDedup returns the interceptor and service of a server that
// deduplicates with store (nil: a new MemoryStore) as configured by opts; see
// UnaryServerDedup.
func NewServerDedup(store Store, opts ...DedupOption) *ServerDedup {
	return &ServerDedup{newDeduper(store, opts)}
}

// UnaryServerInterceptor returns the interceptor; see UnaryServerDedup.
func (s *ServerDedup) UnaryServerInterceptor() grpc.UnaryServerInterceptor { return s.d.unary }

// RegisterService registers the dedup service (DedupLookupMethod) on r.
// Clients that learned deduplication from a server's DedupHeader resend a
// call that may have run only after this service, on the replica their
// lookup reaches, has answered for the call's id: register it on every
// server that installs the interceptor.
func (s *ServerDedup) RegisterService(r grpc.ServiceRegistrar) {
	r.RegisterService(&grpc.ServiceDesc{
		ServiceName: "grpcguard.dedup.v1.Dedup",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Lookup",
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

// lookup serves DedupLookupMethod: the request's RequestIDHeader is the
// call's id with its resend parameters, its body the call's fingerprint.
func (d *deduper) lookup(ctx context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
	if d.err != nil {
		return nil, d.err
	}
	ids := metadata.ValueFromIncomingContext(ctx, RequestIDHeader)
	if len(ids) != 1 {
		return nil, status.Errorf(codes.InvalidArgument, "grpcguard: dedup lookup: %s must be one value", RequestIDHeader)
	}
	key, p, err := parseRequestID(ids[0])
	if err != nil {
		return nil, err
	}
	if !p.resend || !p.fenced || len(in.GetValue()) != fpLen {
		return nil, status.Errorf(codes.InvalidArgument, "grpcguard: dedup lookup: want a resend's id with its fence, and a %d-byte fingerprint", fpLen)
	}
	if d.cfg.key != nil {
		if key, err = d.cfg.key(ctx, key); err != nil {
			return nil, status.Convert(err).Err()
		}
	}
	var fp fingerprint
	copy(fp[:], in.GetValue())
	fence := make([]byte, claimLen) // the store may keep it: not reused
	fenceClaim(fence, fp, p.fence)
	for range maxClaimRounds {
		existing, scope, err := d.store.Claim(ctx, key, fence, d.cfg.ttl)
		if err != nil {
			d.cfg.metrics.storeErr(opClaim)
			return nil, status.Errorf(codes.Unavailable, "grpcguard: dedup store: %v", err)
		}
		if string(existing) == string(fence) { // an earlier lookup's, whose answer was lost
			return &wrapperspb.BytesValue{Value: append([]byte{lookupFenced}, fence[1+fpLen:]...)}, nil
		}
		if existing == nil {
			if code, why := d.refusal(ctx, p, scope); why != "" {
				d.release(ctx, key, fence, false)
				d.cfg.metrics.refuse()
				return nil, status.Errorf(code, "grpcguard: resend of request id refused: %s", why)
			}
			return &wrapperspb.BytesValue{Value: append([]byte{lookupFenced}, fence[1+fpLen:]...)}, nil
		}
		rec, raw, _, err := d.awaitOutcome(ctx, key, existing, fp)
		if err != nil {
			return nil, err
		}
		if rec.done {
			d.cfg.metrics.answer()
			return &wrapperspb.BytesValue{Value: append([]byte{lookupOutcome}, raw...)}, nil
		}
		// released or expired: claim it again
	}
	return nil, status.Errorf(codes.Aborted, "grpcguard: request id claimed and released %d times", maxClaimRounds)
}

// lookupResult is what the client does after a lookup.
type lookupResult struct {
	answered bool   // the outcome was found: the call is done, with err
	err      error  // the call's result when answered
	fence    string // resend with this fence token (hex)
}

// lookupBeforeResend asks the dedup service, through invoker (the chain
// beneath the retry), about the call whose resend relies on learned
// deduplication. ctx is the resend's context; failure is the error the
// call ends with if the resend must not go. See the package comment above.
func (cover *dedupCover) lookupBeforeResend(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts []grpc.CallOption, failure error) lookupResult {
	rm, ok1 := req.(proto.Message)
	out, ok2 := reply.(proto.Message)
	if !ok1 || !ok2 {
		return lookupResult{answered: true, err: failure}
	}
	fp, err := fingerprintOf(prefixOf(method), rm)
	if err != nil {
		return lookupResult{answered: true, err: failure}
	}
	if cover.fence == "" {
		// The client picks the fence's token, so that a lookup whose reply
		// is lost can be asked again: the store re-issues the fence it
		// holds with the same token.
		var t [8]byte
		binary.LittleEndian.PutUint64(t[:], rand.Uint64())
		cover.fence = hex.EncodeToString(t[:])
	}
	var lopts []grpc.CallOption
	for _, o := range opts {
		if _, ok := o.(grpc.PerRPCCredsCallOption); !ok {
			lopts = append(lopts, o) // the caller's other options (compression, size limits...)
		}
	}
	resp := new(wrapperspb.BytesValue)
	for try := 1; ; try++ {
		a := new(attempt) // its own per try: grpc may still write one given up on beneath us
		lctx, creds := cover.resendAttempt(ctx, opts)
		err = invoker(lctx, DedupLookupMethod, wrapperspb.Bytes(fp[:]), resp, cc, a.stamp(append(lopts, creds), false)...)
		if err == nil {
			break
		}
		switch status.Code(err) {
		case codes.Unimplemented:
			// The replica reached has no dedup service: it may be the one
			// the resend would reach, and would run the call again.
			return lookupResult{answered: true, err: failure}
		case codes.Unavailable:
			// The lookup changes nothing but the fence, which it re-issues:
			// it may be asked again, on a new connection once grpc has let
			// go of a dead one, or after a short pause.
			if try < lookupTries && ctx.Err() == nil {
				v := a.reported()
				if v.connDied {
					v.awaitRelease(ctx)
				} else if sleep(ctx, time.Duration(try)*lookupPause) != nil {
					return lookupResult{answered: true, err: failure}
				}
				continue
			}
			return lookupResult{answered: true, err: failure}
		}
		return lookupResult{answered: true, err: err} // refused: the clear answer
	}
	b := resp.GetValue()
	switch {
	case len(b) == 1+8 && b[0] == lookupFenced && hex.EncodeToString(b[1:]) == cover.fence:
		return lookupResult{fence: cover.fence}
	case len(b) > 1 && b[0] == lookupOutcome:
		return lookupResult{answered: true, err: replayOutcome(b[1:], fp, out, opts, failure)}
	}
	return lookupResult{answered: true, err: failure}
}

// replayOutcome returns, to the caller, the stored outcome b of the call
// with fingerprint fp: its reply into out, its metadata into the caller's
// Header and Trailer options, and its status.
func replayOutcome(b []byte, fp fingerprint, out proto.Message, opts []grpc.CallOption, failure error) error {
	rec, err := decodeRecord(b)
	if err != nil || !rec.done || rec.fp != fp {
		return failure
	}
	o, err := rec.outcome()
	if err != nil {
		return failure
	}
	for _, opt := range opts {
		switch opt := opt.(type) {
		case grpc.HeaderCallOption:
			*opt.HeaderAddr = metadata.Join(o.header, replayedMD)
		case grpc.TrailerCallOption:
			*opt.TrailerAddr = o.trailer
		}
	}
	if o.status.GetCode() != int32(codes.OK) {
		return status.ErrorProto(o.status)
	}
	if err := proto.Unmarshal(o.replyBytes, out); err != nil {
		return fmt.Errorf("%w (its stored reply could not be decoded: %v)", failure, err)
	}
	return nil
}

// fenceToken parses a resend-fence parameter: 16 hex digits.
func fenceToken(v string) ([8]byte, bool) {
	var t [8]byte
	if len(v) != 16 {
		return t, false
	}
	_, err := hex.Decode(t[:], []byte(v))
	return t, err == nil
}

// fenceClaim writes into claim the fence claim of fp with token: a resend
// that carries it finds the fence in its store and runs under it.
func fenceClaim(claim []byte, fp fingerprint, token [8]byte) {
	claim[0] = recClaim
	copy(claim[1:], fp[:])
	binary.LittleEndian.PutUint64(claim[1+fpLen:], binary.LittleEndian.Uint64(token[:]))
}

package grpcguard

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/grpcguard/grpcguard/internal/wire"
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
// the client calls the dedup service's lookup (wire.LookupMethod), a method
// only servers that registered the dedup service (package dedup) have; a server without it answers Unimplemented, and the
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

// lookupTries bounds the lookups of one resend that fail with Unavailable
// (the connection broke).
const lookupTries = 5

// lookupPause is the pause before a lookup is asked again after an
// Unavailable whose connection did not die, times the tries so far.
const lookupPause = 5 * time.Millisecond

// lookupResult is what the client does after a lookup.
type lookupResult struct {
	answered bool   // the outcome was found: the call is done, with err
	err      error  // the call's result when answered
	fence    string // resend with this fence token (hex)
	// unconfirmed: the lookup could not confirm that the server
	// deduplicates the call (no dedup service, or no answer): the call ends
	// with the failure it had, not resent.
	unconfirmed bool
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
		return lookupResult{answered: true, err: failure, unconfirmed: true}
	}
	fp, err := wire.FingerprintOf(wire.PrefixOf(method), rm)
	if err != nil {
		return lookupResult{answered: true, err: failure, unconfirmed: true}
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
		err = invoker(lctx, wire.LookupMethod, wrapperspb.Bytes(fp[:]), resp, cc, a.stamp(append(lopts, creds), false)...)
		if err == nil {
			break
		}
		switch status.Code(err) {
		case codes.Unimplemented:
			// The replica reached has no dedup service: it may be the one
			// the resend would reach, and would run the call again.
			return lookupResult{answered: true, err: failure, unconfirmed: true}
		case codes.Unavailable:
			// The lookup changes nothing but the fence, which it re-issues:
			// it may be asked again, on a new connection once grpc has let
			// go of a dead one, or after a short pause.
			if try < lookupTries && ctx.Err() == nil {
				v := a.reported()
				if v.connDied {
					v.awaitRelease(ctx)
				} else if sleep(ctx, time.Duration(try)*lookupPause) != nil {
					return lookupResult{answered: true, err: failure, unconfirmed: true}
				}
				continue
			}
			return lookupResult{answered: true, err: failure, unconfirmed: true}
		}
		return lookupResult{answered: true, err: err} // refused: the clear answer
	}
	r, ok := wire.ParseLookupReply(resp.GetValue())
	switch {
	case ok && r.Fence != "" && r.Fence == cover.fence:
		return lookupResult{fence: cover.fence}
	case ok && r.Outcome != nil:
		return lookupResult{answered: true, err: replayOutcome(r.Outcome, fp, out, opts, failure)}
	}
	return lookupResult{answered: true, err: failure, unconfirmed: true}
}

// replayOutcome returns, to the caller, the stored outcome b of the call
// with fingerprint fp: its reply into out, its metadata into the caller's
// Header and Trailer options, and its status.
func replayOutcome(b []byte, fp wire.Fingerprint, out proto.Message, opts []grpc.CallOption, failure error) error {
	rec, err := wire.DecodeRecord(b)
	if err != nil || !rec.Done || rec.FP != fp {
		return failure
	}
	o, err := rec.Outcome()
	if err != nil {
		return failure
	}
	for _, opt := range opts {
		switch opt := opt.(type) {
		case grpc.HeaderCallOption:
			*opt.HeaderAddr = metadata.Join(o.Header, wire.ReplayedMD)
		case grpc.TrailerCallOption:
			*opt.TrailerAddr = o.Trailer
		}
	}
	if o.Status.GetCode() != int32(codes.OK) {
		return status.ErrorProto(o.Status)
	}
	if err := proto.Unmarshal(o.ReplyBytes, out); err != nil {
		return fmt.Errorf("%w (its stored reply could not be decoded: %v)", failure, err)
	}
	return nil
}

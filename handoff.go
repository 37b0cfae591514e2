package grpcguard

import (
	"context"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
)

// The hand-off between the retry and hedging interceptors and the Dialer.
//
// A retry may resend a non-idempotent call only if the failed attempt provably
// never reached the server. Only the Dialer sees the bytes leave, so:
//
//  1. The retry (or hedging) interceptor puts an *attempt in the context of
//     each attempt it makes.
//  2. The Dialer's interceptor, which runs inside it right before grpc picks a
//     transport, stamps the attempt with its start time and asks grpc, with
//     grpc.Peer, for the local address of the connection the attempt used.
//  3. Each Dialer conn records when a Write last reached its socket; a Write
//     its pre-write probe refused sends nothing and records nothing.
//  4. After a failure the retry asks the Dialer: did any write reach the
//     socket of that local address since the attempt started? If not, no
//     byte of the attempt left the client. No transport at all (the conn
//     could not be made) also proves it.
//
// The answer is conservative: unknown conns, or several conns sharing a local
// address with any write among them, count as "may have been sent".

type attemptKey struct{}

// attempt is what one attempt tells the Dialer and learns from it.
type attempt struct {
	d     *Dialer // set by the Dialer's interceptor; nil if none is installed
	start int64
	peer  peer.Peer
	opts  []grpc.CallOption // reused buffer: the call's options plus grpc.Peer
}

func withAttempt(ctx context.Context, a *attempt) context.Context {
	return context.WithValue(ctx, attemptKey{}, a)
}

func attemptFrom(ctx context.Context) *attempt {
	a, _ := ctx.Value(attemptKey{}).(*attempt)
	return a
}

// reset prepares a for another attempt.
func (a *attempt) reset() {
	a.d = nil
	a.start = 0
	a.peer = peer.Peer{}
}

// begin stamps the attempt and returns the call's options with grpc.Peer
// added, in a's reused buffer.
func (a *attempt) begin(d *Dialer, opts []grpc.CallOption) []grpc.CallOption {
	a.d = d
	a.peer = peer.Peer{}
	a.opts = append(append(a.opts[:0], opts...), grpc.Peer(&a.peer))
	a.start = nanotime()
	return a.opts
}

// outcome says what the Dialer knows of a failed attempt. local is the local
// address of the attempt's connection, or nil if grpc gave it no transport.
// neverLeft: no byte of the attempt left the client, so any method may be
// retried. connDied: the connection was found closed or reset by its peer,
// so the cure is a new connection at once, not a backoff.
func (a *attempt) outcome(local net.Addr) (neverLeft, connDied bool) {
	if a == nil || a.d == nil {
		return false, false
	}
	if local == nil {
		return true, false
	}
	found, sent, died := a.d.sentSince(local.String(), a.start)
	if !found {
		return false, false
	}
	return !sent, died
}

// unaryOutcome is outcome for a unary attempt, whose peer grpc filled in.
func (a *attempt) unaryOutcome() (neverLeft, connDied bool) {
	return a.outcome(a.peer.LocalAddr)
}

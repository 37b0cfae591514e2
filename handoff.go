package grpcguard

import (
	"context"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
)

// The hand-off: how an interceptor that makes attempts (retry, stream retry,
// hedging) learns, from facts and never from what a peer said, whether a
// failed attempt can have reached the server, and whether its connection died.
//
//  1. The interceptor stamps each attempt itself (clientState.begin): the
//     start time, read just before the attempt is handed to the next
//     invoker, and grpc.Peer, so that grpc reports the transport the attempt
//     ended on. No other interceptor is needed, in any chain order.
//  2. Every connection a Dialer makes returns its own net.Addr (*connAddr)
//     from LocalAddr. grpc copies it into peer.Peer.LocalAddr (through TLS
//     too: tls.Conn reports the conn beneath it), so the attempt finds the very
//     connection it used: no lookup by address string, no table that can
//     forget, nothing shared between two conns with the same local address.
//  3. verdictOf asks that conn (conn.quietSince) whether it can no longer
//     write and no write of it was in flight or began since the attempt
//     started. Then no byte of the attempt can ever reach the server: the
//     attempt's bytes were produced after the start, and a closed conn will
//     never write them. conn.Write documents why this is race-free.
//  4. No transport at all also proves it, but only when grpc itself says so:
//     the attempt's grpc.OnFinish ran (grpc calls it after it has written the
//     attempt's peer, or when it failed the attempt before giving it a
//     transport) and the peer is still empty. An empty peer alone proves
//     nothing: an interceptor beneath ours may have given up on grpc's call
//     and returned while grpc still sends it (a bulkhead, a hystrix-style
//     timeout), or failed it without calling grpc at all; the attempt is
//     then "may have been sent", and its storage is left to grpc (attempt.
//     finished). grpc-go resends on its own, transparently, a stream that its
//     transport never wrote or that the server refused (REFUSED_STREAM, or
//     above a GOAWAY's last stream id); the attempt then reports the
//     transport of grpc's last try, and an earlier try on another transport
//     is grpc's own guarantee (RFC 9113 8.7). That resend is grpc-go's, with
//     or without grpcguard, and adds no attempt of ours.
//
// A failed attempt whose conn is not a Dialer's (the user's own dialer without
// a Dialer) is "may have been sent": the answer always errs toward running a
// call at most once.

// verdict is what is known, from facts, of a failed attempt.
type verdict struct {
	// neverLeft: no byte of the attempt left the client or ever will, so any
	// method may be sent again.
	neverLeft bool
	// connDied: the attempt's connection was found closed, reset or broken
	// (or retired by the Dialer), so the cure is a new connection, at once,
	// not a backoff.
	connDied bool
	// conn is the attempt's connection when a Dialer made it.
	conn *conn
	// remote is the server address the attempt ended on (nil: no
	// transport), and start when it began: what a resend relying on the
	// server's deduplication needs (dedupCover.record).
	remote net.Addr
	start  int64
}

// verdictOf judges an attempt that started at start and ended on the
// transport p, which grpc reported (nil or zero when grpc finished the
// attempt without a transport; see attempt.failed for when it is read).
func verdictOf(start int64, pr *peer.Peer) verdict {
	if pr == nil || (pr.Addr == nil && pr.LocalAddr == nil) {
		return verdict{neverLeft: true, start: start}
	}
	ca, ok := pr.LocalAddr.(*connAddr)
	if !ok {
		return verdict{remote: pr.Addr, start: start} // not a Dialer's conn: nothing is known
	}
	c := ca.c
	return verdict{neverLeft: c.quietSince(start), connDied: c.died(), conn: c, remote: pr.Addr, start: start}
}

// awaitRelease waits, when the attempt's conn died, until grpc has let go of
// it (at most releaseWait, or until ctx ends), so that the next attempt picks
// a new transport instead of the dying one. grpc does so within a couple of
// milliseconds of the socket closing; the Dialer's own interceptor waits the
// same way, so this only matters when it is not in the chain, or not inside
// the retry.
func (v verdict) awaitRelease(ctx context.Context) {
	if v.conn == nil || !v.connDied {
		return
	}
	select {
	case <-v.conn.released:
		return
	default:
	}
	t := time.NewTimer(releaseWait)
	defer t.Stop()
	select {
	case <-v.conn.released:
	case <-t.C:
	case <-ctx.Done():
	}
}

// ownedAttempt reports whether an outer grpcguard interceptor owns the call's
// attempts: its attempt rides in the options (see attempt). A call option,
// unlike a context value, never reaches RPCs made inside the attempt
// (credentials, nested calls).
func ownedAttempt(opts []grpc.CallOption) bool {
	for _, o := range opts {
		if _, ok := o.(*attempt); ok {
			return true
		}
	}
	return false
}

// connAddr is the local address a Dialer conn reports: the socket's own, whose
// Network and String it keeps, plus the conn itself.
type connAddr struct {
	net.Addr
	c *conn
}

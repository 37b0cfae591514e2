package grpcguard

import "time"

// The path check: before the first write on a connection idle at least
// WithVerifyAfterIdle, the Dialer asks the network whether the flow still
// exists, with a round trip that carries no payload and sits beneath TLS.
//
// What no poll can see is a path that forgot the connection while both
// sockets are healthy: a NAT gateway, a load balancer or a stateful firewall
// whose flow expired answers the next packet with RST. On Linux, with
// SO_KEEPALIVE on, setting TCP_KEEPIDLE to a value not above the time the
// socket has been idle re-arms the keepalive timer at zero: the kernel sends
// one keepalive probe (an ACK carrying an old sequence number, no data) on
// its next timer tick. The peer answers with an ACK, or a middlebox that
// forgot the flow answers with RST. The check waits for either, reading
// TCP_INFO: the socket closed (RST) is stale; tcpi_last_ack_recv newer than
// the kick is alive; neither within the bound is unanswered, and the write
// goes ahead (a silent peer is TCP_USER_TIMEOUT's and keepalive's job). The
// configured keepalive is restored afterwards.
//
// The wait is bounded by the conn's smoothed RTT (from TCP_INFO) twice, plus
// pathTickSlack for the kernel's timer tick (the probe leaves on the next
// one: up to 4 ms at HZ=250, 10 ms at HZ=100), and at most pathCheckCap.
// A verification costs: two setsockopt calls and one getsockopt(TCP_INFO)
// per pathPollEvery of waiting, no allocation.
//
// Other platforms have no check (their keepalive options do not promise the
// re-arm); the probe, the idle horizon and the retry still apply there.

const (
	pathTickSlack = 12 * time.Millisecond
	pathCheckCap  = 200 * time.Millisecond
	pathPollEvery = time.Millisecond
)

// verifyResult is a path check's answer.
type verifyResult uint8

const (
	verifyAlive      verifyResult = iota // the peer answered
	verifyStale                          // reset, or closed meanwhile
	verifyUnanswered                     // nothing within the bound
	verifyKnownAlive                     // not run: the path idle is below the alive edge
	numVerifyResults
)

// String returns the result label of grpcguard_verifications_total.
func (r verifyResult) String() string {
	switch r {
	case verifyAlive:
		return "alive"
	case verifyStale:
		return "stale"
	case verifyKnownAlive:
		return "known_alive"
	}
	return "unanswered"
}

package grpcguard

import "github.com/grpcguard/grpcguard/internal/wire"

// Metadata keys of request ids and deduplication, the same as package
// dedup's: the client writes and reads them. They are grpcguard's own, so
// that they never clash with tracing or application headers such as
// x-request-id.
const (
	// RequestIDHeader carries a call's request id: 32 hex digits (128
	// random bits) put on by DialOptions clients (see WithRequestIDs), or
	// the caller's own id of 1 to 128 bytes without ';', which the client
	// then keeps. The id may be followed by parameters, each after a ';',
	// that concern one attempt (asking for DedupHeader, marking a resend):
	// dedup.RequestIDHeader describes them.
	RequestIDHeader = wire.RequestIDHeader
	// DedupHeader is the response header by which a server running
	// dedup.UnaryServerInterceptor says, when the call's id asked for it,
	// that it deduplicated the call, under which store scope and for how
	// long it keeps ids: "scope=<scope>;ttl-ms=<milliseconds>". Clients
	// learn from it which methods they may resend.
	DedupHeader = wire.AdvertHeader
	// DedupReplayedHeader is the response header, value "1", that marks a
	// reply (or error) answered from a stored outcome: the handler did not
	// run for this call, it ran once for an earlier one with the same id. A
	// client returning an outcome its lookup found sets it in the caller's
	// grpc.Header too.
	DedupReplayedHeader = wire.ReplayedHeader
)

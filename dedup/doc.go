// Package dedup is the server half of grpcguard: it runs each request id at
// most once, so that a client may resend a call whose reply was lost, or
// whose connection broke after the request may have left, without the call
// running twice.
//
// A grpcguard client (grpcguard.DialOptions) puts a request id on its unary
// calls (RequestIDHeader). On the server, the interceptor claims the id in a
// Store, runs the handler, and keeps its outcome (reply or error, with its
// metadata) for the TTL; a call with an id that ran gets the stored outcome,
// marked with ReplayedHeader, and the handler does not run again. A call
// whose id is still running waits for its outcome. A request reusing an id
// with other content is refused (AlreadyExists), never answered with another
// request's outcome.
//
// Install the interceptor and the dedup service together:
//
//	sd := dedup.NewServer(store) // nil: a MemoryStore
//	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(sd.UnaryServerInterceptor()))
//	sd.RegisterService(srv)
//
// Clients learn from the server's responses (AdvertHeader, on the few calls
// that ask) which methods it deduplicates, and before a resend that relies on
// it they ask the dedup service (LookupMethod) on the replica the resend
// would reach: a replica without it answers Unimplemented, and the client
// does not resend. UnaryServerInterceptor alone deduplicates calls that carry
// ids, but learning clients resend nothing on its strength.
//
// Defaults: ids and outcomes are kept 5 minutes (DefaultTTL, see WithTTL);
// a store that fails fails the calls with Unavailable (see WithFailOpen);
// ids come from RequestIDHeader only (see WithIDField for AIP-155 request_id
// fields), each id its own key (see WithKey to scope ids by caller).
//
// Stores: MemoryStore keeps ids in the process, bounded in bytes and entries
// (64 MiB by default); it serves one replica. The module
// github.com/grpcguard/grpcguard/redisstore keeps them in Redis, shared by
// every replica. Any Store passes the conformance suite in dedup/storetest.
//
// Metrics (NewMetrics, WithMetrics) count executions, answers from the
// store, waits, conflicts, refused resends, releases, evictions and store
// errors; see Metrics for the series. WithHooks calls your functions at the
// same points (OnOutcome, OnStoreError), and WithLogger, built on them, logs
// store errors and calls run without deduplication under WithFailOpen.
//
// Streams are not deduplicated: a stream's outcome is a sequence of
// messages, each possibly acted on by the client before a failure.
package dedup

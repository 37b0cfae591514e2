// Package grpcguard keeps grpc-go clients working when the network closes
// their idle connections under them, and resends a failed call only when that
// cannot run it twice.
//
// A load balancer, NAT, proxy or server closes an idle pooled connection with
// FIN or RST, or forgets it. The client does not notice until it writes: the
// next RPC fails with Unavailable ("connection reset by peer", "EOF"), and
// nobody can say whether the server ran it.
//
// # Entry point
//
// DialOptions returns everything grpcguard adds to a client, for
// grpc.NewClient(target, append(opts, creds)...): the Dialer
// (grpc.WithContextDialer), one unary interceptor that hedges or retries, one
// stream interceptor that retries, grpc.WithDisableRetry, and, unless turned
// off, HTTP CONNECT proxying as grpc-go does it. Use one DialOptions result
// per grpc.ClientConn.
//
//	opts, err := grpcguard.DialOptions(grpcguard.WithMetrics(m))
//	conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(creds))...)
//
// The pieces also exist one by one (NewDialer, Dialer.UnaryClientInterceptor,
// Dialer.StreamClientInterceptor, UnaryClientRetry, StreamClientRetry,
// UnaryClientHedge, Probe); each interceptor built that way has a budget of
// its own.
//
// What it does, in layers:
//
//   - The Dialer's connections can be probed without reading from them
//     (Probe: poll(2) for POLLRDHUP, FIN told from RST, no byte consumed, no
//     read lock taken). Before an attempt picks a transport, the Dialer's
//     interceptor probes the connections that have been idle and retires
//     those idle past the idle horizon that carry no RPC. Each connection
//     also checks itself before its first Write after idle and sends nothing
//     on a stale socket; on Linux, when its path has been silent a second or
//     more and longer than the Dialer has seen it survive, it first waits
//     for a keepalive round trip (the path check), which catches a NAT or
//     load balancer that forgot the flow.
//   - Each Dialer learns from its connections' deaths: a reset after idle
//     shortens the TCP keepalive of all its connections, so that
//     middleboxes keep their flows; two deaths whose idle ages agree set the
//     idle horizon, past 80% of which idle connections are retired.
//   - Retry and hedging resend a call only when it provably never left the
//     client (a fact of the attempt's own connection, never a status text),
//     when its method is idempotent (WithIdempotentMethods, the protobuf
//     option idempotency_level, or a service config policy), or when its
//     server deduplicates request ids. One function decides this for every
//     extra attempt; one budget pays for all of them.
//   - Request ids (RequestIDHeader) on the calls where they matter, so that a
//     server running the interceptor of package
//     github.com/grpcguard/grpcguard/dedup runs each call once and answers a
//     resend from the stored outcome. DedupStatus (WithDedupStatus) shows
//     what a client learned of its servers.
//
// # Options
//
// Every constructor takes every Option and ignores the ones that do not
// concern it, so one list configures a whole client. An Option is one of two
// kinds, told apart by the compiler:
//
//   - a ClientOption is about the whole client (the Dialer, the budget, the
//     metrics, what is idempotent). It is not a grpc.CallOption: passing one
//     to a call does not compile.
//   - a CallOption sets the default of every call when given to a
//     constructor, and overrides it for one call when given to that call, as
//     in client.Get(ctx, req, grpcguard.WithMaxAttempts(1)). It is a
//     grpc.CallOption.
//
// Invalid values never panic: DialOptions returns an error, DialContext
// fails, and an interceptor fails the call with InvalidArgument before
// anything is sent; each such error matches ErrInvalidOption and names the
// option and the value. Each option's documentation gives its unit, range
// and reasons in full; in one line each, with its default:
//
// ClientOption, the Dialer:
//
//   - WithProbeAfterIdle(d), 100ms: probe a connection idle at least d before
//     a pick and before a write. Middleboxes close idle connections after
//     seconds or more, so 100ms catches every such close while a busy
//     connection is never probed.
//   - WithVerifyAfterIdle(d), 1s (Linux): the path check before the first
//     write after the path was silent d. TCP_KEEPIDLE counts whole seconds,
//     so 1s is the shortest idle at which the probe leaves at once.
//   - WithMaxIdle(d), learned: the idle horizon by hand; 0 never retires.
//     Learned from two deaths that agree, because a wrong horizon costs a
//     redial per idle period.
//   - WithSweepInterval(d), off: a background sweep closes stale idle
//     connections every d. The check before the pick already covers calls.
//   - WithKeepAlive(idle, interval, count), 15s, 5s, 3: TCP keepalive, which
//     middleboxes reset their idle timers on (grpc-go leaves the OS default,
//     2h on Linux).
//   - WithUserTimeout(d), 20s (Linux): TCP_USER_TIMEOUT, grpc-go's own
//     keepalive timeout, long enough to survive a short outage.
//   - WithDialFunc(f), none: obtain every connection from f; no proxy, no
//     socket options.
//   - WithNoProxy(), off: dial directly whatever HTTPS_PROXY says, since
//     grpc.WithNoProxy does not reach a custom dialer.
//   - WithMetrics(m), none: count into m; without it nothing is counted and
//     nothing costs.
//   - WithLogger(l), none: log to a *slog.Logger: a warning for a call not
//     resent because it may have run and for a proxy that failed, debug
//     records per attempt only when enabled (the levels are on WithLogger).
//   - WithHooks(h), none: call h's functions on each attempt, resend, hedge,
//     call not resent (and why: NotResentReason reads it from the error),
//     stale or retired connection; several add up. WithLogger is built on
//     them.
//
// ClientOption, retry, hedging and budget:
//
//   - WithIdempotentMethods(names...), none: methods that may be resent
//     after they may have run, and hedged; adds to the proto declarations.
//   - WithRetryBudget(ratio, minPerSecond, window), 0.2, 10, 10s: one budget
//     for every extra attempt, Finagle's and Linkerd's defaults.
//   - WithHedgeBudget(ratio), 0.1: the share of attempts the hedge delay may
//     start, half the budget's ratio, so that retries always keep room.
//   - WithRetryThrottling(maxTokens, tokenRatio), off: the gRFC A6 token
//     bucket instead of the ratio budget.
//   - WithAdaptiveHedgeDelay(quantile, min, max), 0.95, 5ms, 1s: hedge after
//     the method's recent p95, about 5% more attempts (The Tail at Scale);
//     turns hedging on in DialOptions.
//   - WithServiceConfig(json), none: gRFC A6 methodConfig (retryPolicy,
//     hedgingPolicy, timeout) and retryThrottling, validated as grpc-go does.
//
// ClientOption, request ids and deduplication:
//
//   - WithRequestIDs(on), where they matter: by default an id goes on every
//     call of a method the server deduplicates and on one call per method
//     every 100ms, from which the client learns; an id on every call costs
//     a unique header per call for nothing where the server does not
//     deduplicate.
//   - WithServerDedup(names...), none (learned): declare that every replica
//     deduplicates these methods with one store; the operator's promise.
//   - WithDedupStatus(s), none: report what the client learned into s.
//
// CallOption:
//
//   - WithMaxAttempts(n), 3 (the SRE book's advice), 1 to 10: attempts per
//     call, the original included.
//   - WithRetryDisabled(), WithHedgingDisabled(): turn retry or hedging off,
//     most useful for one call.
//   - WithPerAttemptTimeout(d), none: bound each attempt; an attempt that
//     times out is resent when safe, the caller's deadline never is.
//   - WithRetryableCodes(codes...), Unavailable: the one code that says the
//     server could not take the call.
//   - WithNonFatalCodes(codes...), Unavailable: codes after which a hedged
//     call sends its next attempt at once (gRFC A6).
//   - WithBackoff(initial, max, multiplier), 50ms, 5s, 2: full jitter (a
//     service config retryPolicy: gRFC A6's ±20%); failures of a stale
//     connection are resent at once.
//   - WithBackoffFunc(f), none: a go-grpc-middleware/v2 retry.BackoffFunc.
//   - WithHedgeDelay(d), none: hedge idempotent calls d after the last
//     attempt; 0 selects the adaptive delay; turns hedging on.
//   - WithRetryBufferSize(bytes), 256 KiB, as grpc-go: sent stream messages
//     kept for replay; past it the stream commits.
//
// MetricsOption, a third scope, configures a collector that several clients
// may share: WithConstLabels(labels) adds constant labels to every series.
//
// # Metrics
//
// NewMetrics returns one prometheus.Collector; register it on your own
// registry and pass it with WithMetrics. Its series, with their labels:
//
//	grpcguard_stale_connections_total{reason}           reason: peer_closed, reset, error; each connection counted once
//	grpcguard_stale_connection_idle_seconds             histogram: data idle of connections found dead, or closed after a GOAWAY
//	grpcguard_idle_horizon_seconds                      the horizon, learned (0 until two deaths agree) or WithMaxIdle's
//	grpcguard_keepalive_seconds                         the TCP keepalive idle in use now
//	grpcguard_connections_retired_total{reason}         reason: learned, max_idle
//	grpcguard_probes_total{result}                      result: alive, stale
//	grpcguard_verifications_total{result}               path checks; result: alive, stale, unanswered, known_alive
//	grpcguard_verification_duration_seconds             histogram: how long path checks waited
//	grpcguard_dials_total{result}                       result: ok, error
//	grpcguard_connections_open                          connections of grpcguard dialers not yet closed
//	grpcguard_connections_unprobed_total                connections from a dial function that hide their socket
//	grpcguard_retries_total{grpc_service,grpc_method,grpc_code}   retries sent, by the code of the attempt retried
//	grpcguard_retries_throttled_total{grpc_service,grpc_method}   retries refused by the budget
//	grpcguard_retries_unprocessed_total{grpc_service,grpc_method} retries allowed because the attempt never left
//	grpcguard_retries_deduplicated_total{grpc_service,grpc_method} retries allowed because the server deduplicates
//	grpcguard_hedges_total{grpc_service,grpc_method}              hedged attempts beyond the original
//	grpcguard_hedge_wins_total{grpc_service,grpc_method}          calls won by a hedge
//	grpcguard_hedges_throttled_total{grpc_service,grpc_method}    hedges refused by the budget
//	grpcguard_hedge_delay_seconds{grpc_service,grpc_method}       the current adaptive hedge delay
//
// Method labels are bounded as in gRFC A66: a method the client does not know
// (no grpc.StaticMethod, no descriptor in the global protobuf registry, not
// named in an option or service config) is recorded as
// grpc_service="other", grpc_method="other". The server's series
// (grpcguard_dedup_*) are in package dedup.
//
// # OpenTelemetry
//
// The module github.com/grpcguard/grpcguard/opentelemetry turns Hooks into
// OpenTelemetry metrics (gRFC A96's grpc.client.call.retries, hedges and
// retry_delay, A94's grpc.subchannel.disconnections, and grpcguard.*) and
// trace events on the call's span. It is a module of its own so that this
// package links no OpenTelemetry package (TestNoOpenTelemetryLinked). With
// grpc-go's stats/opentelemetry, give its DialOption before DialOptions'
// options: grpc-go then sees one call of several attempts, not one call per
// attempt. DialOptions cannot impose that order: the caller places the
// options.
//
// # Errors
//
// Stale connections are reported with errors matching ErrStaleConn and
// carrying a *StaleConnError. Invalid options match ErrInvalidOption.
//
// # Further reading
//
// The repository's docs directory holds the design (how the probe, the path
// check, the idle horizon and the one retry decision work, and where their
// proofs sit in the code), the dedup protocol, proxies and dial functions, a
// comparison with grpc-go's retry and go-grpc-middleware, and the
// measurements, each with its command.
package grpcguard

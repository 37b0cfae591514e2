// Package opentelemetry records what grpcguard does as OpenTelemetry metrics
// and trace events, in the names and shapes of grpc-go's own OpenTelemetry
// instrumentation (package google.golang.org/grpc/stats/opentelemetry, gRFC
// A66, A72, A94 and A96), so that grpcguard's retries, hedges and stale
// connections appear where grpc-go users already look.
//
// It is built on grpcguard.Hooks and adds nothing to the client's hot path
// beyond them: Hooks returns the functions, grpcguard.WithHooks installs them.
//
//	h, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp, TracerProvider: tp, Target: target})
//	opts, err := grpcguard.DialOptions(grpcguard.WithHooks(h))
//
// # Its own module
//
// This package is the module github.com/grpcguard/grpcguard/opentelemetry, as
// the Redis store is github.com/grpcguard/grpcguard/redisstore. grpc-go's
// go.mod already requires go.opentelemetry.io/otel, otel/metric, otel/trace
// and the SDK (for its stats/opentelemetry package), so those modules are in
// grpcguard's module graph either way; but a module in the graph costs
// nothing until a package of it is imported. The root package imports none,
// and a test of the root module (deps_test.go) runs go list -deps on it and
// on the demo to prove that no go.opentelemetry.io package is linked into a
// binary that does not ask for it. Keeping this package in a module of its
// own also keeps the root's go.mod free of OpenTelemetry requirements: a
// user who never imports it never resolves them.
//
// # Metrics
//
// With Options.MeterProvider set, per call that grpcguard sent attempts for
// (recorded as the call ends, as A96 asks), with the labels grpc.method and,
// when Options.Target is set, grpc.target:
//
//   - grpc.client.call.retries {retry}: attempts sent after a failure;
//     0 is not reported (A96). Buckets 1, 2, 3, 4, 5.
//   - grpc.client.call.hedges {hedge}: attempts started by the hedge
//     delay; 0 is not reported (A96). Buckets 1, 2, 3, 4, 5.
//   - grpc.client.call.retry_delay (s): the time the call waited with no
//     attempt in flight; reported for calls that sent more than one
//     attempt, as grpc-core does (a call of one attempt has no delay to
//     tell). A66's latency buckets.
//   - grpc.client.call.transparent_retries is not recorded: grpc-go's
//     transparent retries happen inside one grpcguard attempt, below the
//     interceptors that grpcguard's hooks see, so grpcguard cannot count
//     them. grpc-go's own instrumentation counts each of them as an attempt
//     (grpc.client.attempt.started) when it is placed as below.
//
// grpc.method is grpcguard's bounded method label without its leading slash,
// as A66's: the full method when grpcguard knows the method (registered,
// called with grpc.StaticMethod, or named in an option or the service
// config), "other" otherwise. grpc.target is Options.Target as given: the
// hooks do not see the grpc.ClientConn, so the target cannot be read from it;
// A66 asks for the canonical target (grpc.ClientConn.CanonicalTarget, such as
// "dns:///host:443"). Without it the label is left off.
//
// Per connection, from grpcguard's Dialer:
//
//   - grpc.subchannel.disconnections {disconnection} (A94), counted when the
//     Dialer finds a connection stale, with grpc.disconnect_error mapped
//     from grpcguard.StaleReason as grpc-go maps the socket's error:
//     Reset is "connection reset", SocketError "socket error", PeerClosed
//     (a FIN, an EOF to grpc-go) "unknown". grpc-go v1.85 records a metric of
//     the same name from its subchannels when it is enabled there (it is
//     off by default, experimental): enable one of the two, or tell them
//     apart by instrumentation scope.
//   - grpcguard.client.connection.stale {connection}, by grpcguard.stale_reason
//     (peer_closed, reset, error: StaleReason.String);
//   - grpcguard.client.connection.stale_idle (s): how long stale
//     connections had been idle, the idle timeout of what is on the path;
//   - grpcguard.client.connection.retired {connection}, by
//     grpcguard.retired_at (learned: at the learned idle horizon; max_idle:
//     at WithMaxIdle);
//   - grpcguard.client.idle_horizon (s) and grpcguard.client.keepalive (s),
//     gauges: the idle age at which connections are retired (0: never) and
//     the TCP keepalive idle in force, set each time either changes (the
//     Dialer reports changes only: until the first, its configured
//     WithMaxIdle and WithKeepAlive hold, and the gauges have no value);
//   - grpcguard.client.dial_errors {dial}: connections the Dialer could
//     not open, by grpcguard.via_proxy (true: the HTTP CONNECT proxy
//     failed or refused the tunnel);
//   - grpcguard.client.call.not_resent {call}, by grpc.method and
//     grpcguard.reason (MAY_HAVE_RUN, ATTEMPTS_EXHAUSTED, ...): failed
//     attempts the call would resend that were not sent again.
//
// The server half (package dedup) has its own hooks: DedupHooks records
// grpcguard.dedup.outcomes and grpcguard.dedup.store_errors, for
// dedup.WithHooks.
//
// The Prometheus collector's path checks (verification_duration_seconds)
// have no OpenTelemetry twin: grpcguard.Hooks has no event for them.
//
// # Traces
//
// With Options.TracerProvider set, each attempt, hedge and decision of a call
// is added as an event to the span in the call's context, when that span is
// recording; nothing is done otherwise:
//
//   - "grpcguard.attempt": grpcguard.attempt (1 for the original),
//     grpcguard.hedge, and A72's previous-rpc-attempts;
//   - "grpcguard.decision" after a failed attempt: grpcguard.decision
//     "resent" with grpcguard.reason NEVER_LEFT, IDEMPOTENT or
//     DEDUPLICATED and grpcguard.wait (s), or "not resent" with
//     MAY_HAVE_RUN, ATTEMPTS_EXHAUSTED and the others; and
//     grpc.status_code, the failed attempt's code;
//   - "grpcguard.decision" with grpcguard.decision "hedged" and
//     grpcguard.hedge_delay (s) when the hedge delay starts an attempt.
//
// Events, not spans of their own: the hooks say when an attempt starts but
// not when each one ends, so a span per attempt could not be ended
// truthfully; and A72's attempt spans already exist where they belong when
// grpc-go's tracing is placed outside grpcguard (below): grpc-go starts one
// "Attempt." span per grpcguard attempt under its "Sent." call span, and
// grpcguard's events on that call span say why each attempt was sent. The
// TracerProvider is the switch and names what the events are for; grpcguard
// starts no span with it.
//
// # Order with grpc-go's OpenTelemetry and go-grpc-middleware's Prometheus
//
// grpc-go runs chained interceptors in the order of the dial options that
// added them, the first outermost. Give grpc-go's
// stats/opentelemetry.DialOption before grpcguard's options:
//
//	opts, err := grpcguard.DialOptions(grpcguard.WithHooks(h))
//	opts = append([]grpc.DialOption{grpcotel.DialOption(o)}, opts...)
//	conn, err := grpc.NewClient(target, append(opts, creds)...)
//
// Then one logical call is one call to grpc-go's instrumentation, and each
// grpcguard attempt is one of its attempts: for a call sent three times,
// grpc.client.call.duration counts 1 and grpc.client.attempt.started 3, and
// its tracing shows one "Sent." span with three "Attempt." spans. Given after
// grpcguard's options, grpc-go's interceptor runs once per attempt: three
// calls of one attempt each, each its own span. go-grpc-middleware's
// Prometheus client metrics (providers/prometheus) are interceptors only,
// with no notion of attempts: given before grpcguard's options they count
// logical calls, after them attempts.
//
// grpcguard.DialOptions cannot make this order the default: it returns
// options that the caller places, and grpc-go gives an interceptor no way to
// move itself inside another. (grpc.WithUnaryInterceptor, the unchained one,
// always runs outermost, whatever its place.)
package opentelemetry

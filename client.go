package grpcguard

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// clientState is what the interceptors of one client share: the resolved
// options, the one budget of extra attempts, and what is known per method.
// DialOptions builds one and gives it to the unary and stream interceptors it
// installs, so that retries, stream retries and hedges spend from one budget
// and A6 throttling sees every attempt. Interceptors built one by one
// (UnaryClientRetry, StreamClientRetry, UnaryClientHedge) each have their
// own, and each bounds only its own extra attempts.
type clientState struct {
	cfg    config
	rt     *clientRuntime
	err    error // invalid options, as an InvalidArgument status that every call fails with
	budget *budget

	methods methodTable

	// The Dialer's check before the pick, when DialOptions runs it inside
	// each attempt rather than as a further interceptor of the chain; nil
	// when the chain runs it (or there is none).
	pickUnary  grpc.UnaryClientInterceptor
	pickStream grpc.StreamClientInterceptor
}

// newClientState returns the state of interceptors configured by cfg that
// share rt with the rest of their client.
func newClientState(cfg config, rt *clientRuntime) *clientState {
	state := &clientState{cfg: cfg, rt: rt, budget: newBudget(cfg.budget)}
	state.methods.cs = state
	state.methods.other.service, state.methods.other.method, state.methods.other.label = otherLabel, otherLabel, otherLabel
	return state
}

// standaloneState parses opts, once, for an interceptor built on its own
// (UnaryClientRetry, StreamClientRetry, UnaryClientHedge): it shares nothing
// with other parts of a client. With invalid options every call of the
// interceptor fails with them, as an InvalidArgument status.
func standaloneState(opts []Option) *clientState {
	cfg, err := newConfig(opts)
	if err != nil {
		return &clientState{cfg: cfg, rt: &clientRuntime{}, err: status.Error(codes.InvalidArgument, err.Error())}
	}
	return newClientState(cfg, &clientRuntime{})
}

// invoke sends one attempt of the unary call r, into reply: through the Dialer's check
// before the pick when this state runs it, else straight to invoker.
func (cs *clientState) invoke(ctx context.Context, r *unaryRPC, reply any, opts []grpc.CallOption) error {
	if cs.pickUnary != nil {
		return cs.pickUnary(ctx, r.method, r.req, reply, r.cc, r.invoker, opts...)
	}
	return r.invoker(ctx, r.method, r.req, reply, r.cc, opts...)
}

// newStream creates one attempt of a stream, as invoke does for unary calls.
func (cs *clientState) newStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts []grpc.CallOption) (grpc.ClientStream, error) {
	if cs.pickStream != nil {
		return cs.pickStream(ctx, desc, cc, method, streamer, opts...)
	}
	return streamer(ctx, desc, cc, method, opts...)
}

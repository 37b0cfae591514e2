package dedup

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpcguard/grpcguard/internal/wire"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Metadata keys of request ids and deduplication. They are grpcguard's own,
// so that they never clash with tracing or application headers such as
// x-request-id. grpcguard clients write and read them; the root package
// names them too.
const (
	// RequestIDHeader carries a call's request id: 32 hex digits (128
	// random bits) from grpcguard clients; any id of 1 to 128 bytes
	// without ';' is accepted. The id may be followed by parameters,
	// each after a ';', that concern one attempt and never the id:
	//
	//   - "advertise": the response carries AdvertHeader. A client asks on
	//     the few calls from which it learns, so that the other calls do not
	//     pay for a header they would not read.
	//   - "resend-scope=<scope>" and "resend-age-us=<n>": the attempt is a
	//     resend of a call whose earlier attempt may have run, under the
	//     store scope the client learned from that attempt's replica (empty
	//     when the client declared deduplication with
	//     grpcguard.WithServerDedup), n microseconds before the resend left
	//     (stamped as grpc writes its headers, rounded up). A server that
	//     does not know the id refuses the resend when its store has another
	//     scope or keeps ids for no more than n µs: the first attempt may
	//     have run where this server cannot see it.
	//   - "resend-fence=<16 hex digits>", with the above: the token of the
	//     fence the dedup service's lookup claimed for this resend (see
	//     LookupMethod); a server whose store holds it runs the resend under
	//     it.
	//   - "resend-age-ms=<n>", sent by earlier clients instead of
	//     resend-age-us: an age stamped before the resend waited for its
	//     connection, and truncated. A server answers such a resend from its
	//     store, but refuses it when it does not know the id: the age cannot
	//     be trusted.
	//
	// Other parameters are refused (InvalidArgument), so that an id
	// containing ';' is never cut short.
	RequestIDHeader = wire.RequestIDHeader
	// AdvertHeader is the response header by which UnaryServerInterceptor
	// says, when the call's id asked for it ("advertise"), that it
	// deduplicated the call, under which store scope and for how long it
	// keeps ids: "scope=<scope>;ttl-ms=<milliseconds>".
	AdvertHeader = wire.AdvertHeader
	// ReplayedHeader is the response header, value "1", that marks a reply
	// (or error) answered from a stored outcome: the handler did not run for
	// this call, it ran once for an earlier one with the same id. The stored
	// outcome's own headers come with it. A grpcguard client returning an
	// outcome its lookup found (LookupMethod) sets it in the caller's
	// grpc.Header too.
	ReplayedHeader = wire.ReplayedHeader
)

// DefaultTTL is how long UnaryServerInterceptor keeps a request id and its
// outcome by default: far longer than any retry of a call (those come within
// the call's deadline, seconds), short enough that a busy server's store
// stays small. See WithTTL.
const DefaultTTL = wire.DefaultTTL

// maxClaimRounds bounds how often one call claims its id again after the
// claim it found was released or expired.
const maxClaimRounds = 64

// NotExecuted marks err, returned by a handler running under
// UnaryServerInterceptor, as a failure after which nothing was done: the
// claim on the call's id is released instead of storing err, so that a
// resend runs the handler again. Use it for failures known to have changed nothing (the
// database was unreachable before the transaction began). The caller receives
// err as if it were not wrapped. NotExecuted(nil) is nil.
func NotExecuted(err error) error {
	if err == nil {
		return nil
	}
	return &notExecutedError{err}
}

type notExecutedError struct{ err error }

func (e *notExecutedError) Error() string { return e.err.Error() }
func (e *notExecutedError) Unwrap() error { return e.err }

// UnaryServerInterceptor returns a server interceptor that runs each request
// id at most once within its TTL and answers repeats with the first outcome, so
// that a client may resend a call whose reply was lost. Install it with
// grpc.ChainUnaryInterceptor; store nil means a new MemoryStore with default
// bounds.
//
// For each unary call:
//
//   - no RequestIDHeader: the handler runs as usual;
//   - a new id: it is claimed, the handler runs, and its outcome is stored
//     for the TTL;
//   - an id that is running: the call waits for its outcome (no polling; as
//     long as the caller's context allows), then returns it;
//   - an id with an outcome: the outcome is returned, the handler does not
//     run;
//   - an id used with a different request (SHA-256 of the method's digest
//     and the request's deterministic protobuf encoding): AlreadyExists, and
//     never the stored outcome: one caller cannot read another's reply by reusing
//     an id. See WithKey to keep callers' ids apart altogether.
//
// Which outcomes are stored: every outcome of the handler, OK and errors
// alike, with the reply, status details and the header and trailer metadata
// the handler set. An error does not prove that nothing was done (a timeout
// after the write committed, a failure after a side effect), so it is final
// too; a handler that knows it did nothing returns NotExecuted(err) and the
// id is released for a resend to run again. A panic releases the claim and
// goes on. Outcomes the interceptor produces itself (invalid ids, conflicts,
// the caller's context ending while it waits, store failures) are not stored.
//
// The response to a deduplicated call whose id asks for it ("advertise", see
// RequestIDHeader) carries AdvertHeader: the store's scope and its retention.
// grpcguard clients ask on one call per method now and then, and learn
// from it, per replica, that they may resend the method's calls. The header
// is not set on other responses: it would cost every call a copy of the
// response metadata (grpc-go's SetHeader) for nobody to read.
//
// A resend (the id's resend parameters) of an id this server does not know
// is refused with FailedPrecondition when the store's scope differs from the
// one the client names, or the first attempt is older than the store keeps
// ids (Store.Retention, and RetentionChecker where the store implements
// it): the first attempt may have run somewhere this server cannot see.
//
// Requests that are not protobuf messages are not deduplicated, and neither
// are streams: a stream's outcome is a sequence of messages, each possibly
// acted on by the client before a failure; use request ids at the
// application level there. If the store fails, calls fail with Unavailable
// (see WithFailOpen); an outcome that cannot be stored is still returned
// to its caller. Invalid options fail every call with Internal, naming the
// option.
//
// Clients that learned deduplication from AdvertHeader resend a call that may
// have run only after the dedup service answered for its id (see
// NewServer and Server.RegisterService): with this interceptor
// alone, such clients resend nothing on its strength.
func UnaryServerInterceptor(store Store, opts ...Option) grpc.UnaryServerInterceptor {
	return newDeduper(store, opts).unary
}

func newDeduper(store Store, opts []Option) *deduper {
	d := &deduper{cfg: config{ttl: DefaultTTL}}
	var errs []error
	for _, o := range opts {
		if o.apply == nil {
			continue
		}
		if err := o.apply(&d.cfg); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		d.err = status.Error(codes.Internal, err.Error())
	}
	if store == nil {
		ms, _ := NewMemoryStore(MemoryStoreConfig{Metrics: d.cfg.metrics})
		store = ms
	}
	d.store = store
	return d
}

// deduper is the state of one UnaryServerInterceptor interceptor.
type deduper struct {
	cfg    config
	err    error
	store  Store
	advert atomic.Pointer[advert]
	// What is known of each method, copied on write: a server has a fixed
	// set of methods, and only they reach a unary interceptor.
	methods   atomic.Pointer[map[string]*methodState]
	methodsMu sync.Mutex
}

// methodState is what a deduper keeps of one method.
type methodState struct {
	name   string // the full method
	prefix wire.MethodPrefix
	reply  atomic.Pointer[replyType] // once known
	// idField is the request's id field (WithIDField), looked up on
	// the method's first request.
	idField atomic.Pointer[idField]
}

// idField is a method's request id field; fd nil: the request has none.
type idField struct{ fd protoreflect.FieldDescriptor }

// fieldID returns the value of req's id field (WithIDField), "" when
// it has none or it is empty.
func (d *deduper) fieldID(method string, req any) (string, error) {
	msg, ok := req.(proto.Message)
	if !ok {
		return "", nil
	}
	ms := d.method(method)
	f := ms.idField.Load()
	if f == nil {
		f = &idField{}
		fields := msg.ProtoReflect().Descriptor().Fields()
		for _, name := range d.cfg.idFields {
			if fd := fields.ByName(protoreflect.Name(name)); fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList() {
				f.fd = fd
				break
			}
		}
		ms.idField.Store(f)
	}
	if f.fd == nil {
		return "", nil
	}
	id := msg.ProtoReflect().Get(f.fd).String()
	if len(id) > wire.MaxRequestID {
		return "", status.Errorf(codes.InvalidArgument, "grpcguard: request field %s: the id must be at most %d bytes", f.fd.Name(), wire.MaxRequestID)
	}
	return id, nil
}

type replyType struct{ t protoreflect.MessageType }

// method returns the state of the named method, made on its first call.
func (d *deduper) method(name string) *methodState {
	if m := d.methods.Load(); m != nil {
		if ms := (*m)[name]; ms != nil {
			return ms
		}
	}
	d.methodsMu.Lock()
	defer d.methodsMu.Unlock()
	old := d.methods.Load()
	if old != nil {
		if ms := (*old)[name]; ms != nil {
			return ms
		}
	}
	next := make(map[string]*methodState)
	if old != nil {
		maps.Copy(next, *old)
	}
	ms := &methodState{name: name, prefix: wire.PrefixOf(name)}
	next[name] = ms
	d.methods.Store(&next)
	return ms
}

// advert is the AdvertHeader value for one scope and retention, built once
// and kept until a shorter retention or another scope replaces it, or it is
// advertTTL old.
type advert struct {
	scope string
	ms    int64
	until int64 // nanotime
	md    metadata.MD
}

// advertTTL is how long an advert stands while the store's retention grows:
// a store under pressure drops ids at ages that differ from one eviction to
// the next, and rebuilding the header for each would cost every call.
// Advertising the shortest of them for a while is safe: a client resends
// only inside what it was told, and the server refuses a resend older than
// what it keeps now.
const advertTTL = time.Second

// dedupCall is what one call under a claim keeps: the claim's bytes, which
// the store may hold until Finish or Release, and the handler's metadata.
type dedupCall struct {
	claim [wire.ClaimLen]byte
	rec   recorder
}

func (d *deduper) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if d.err != nil {
		return nil, d.err
	}
	ids := metadata.ValueFromIncomingContext(ctx, RequestIDHeader)
	var (
		key string
		p   wire.Params
		err error
	)
	switch {
	case len(ids) == 1:
		if info.FullMethod == LookupMethod {
			return handler(ctx, req) // it reads the id itself
		}
		if key, p, err = wire.ParseRequestID(ids[0]); err != nil {
			return nil, err
		}
	case len(ids) > 1:
		return nil, status.Errorf(codes.InvalidArgument, "grpcguard: %s must be one value", RequestIDHeader)
	case len(d.cfg.idFields) == 0:
		return handler(ctx, req)
	default:
		if key, err = d.fieldID(info.FullMethod, req); err != nil || key == "" {
			if err != nil {
				return nil, err
			}
			return handler(ctx, req)
		}
	}
	msg, ok := req.(proto.Message)
	if !ok {
		return handler(ctx, req)
	}
	if d.cfg.key != nil {
		if key, err = d.cfg.key(ctx, key); err != nil {
			return nil, status.Convert(err).Err()
		}
	}
	ms := d.method(info.FullMethod)
	fp, err := wire.FingerprintOf(ms.prefix, msg)
	if err != nil {
		return handler(ctx, req) // cannot tell requests apart: no dedup
	}
	// One allocation for what the call keeps while it runs: its claim (the
	// same token in every round: only one of the call's claims is ever
	// stored, and a stored one ends the loop) and the handler's metadata.
	c := &dedupCall{}
	claim := c.claim[:]
	if p.Fenced {
		wire.FenceClaim(claim, fp, p.Fence) // the lookup's claim: run under it
	} else {
		wire.FillClaim(claim, fp)
	}
	waited := false
	for range maxClaimRounds {
		existing, scope, err := d.store.Claim(ctx, key, claim, d.cfg.ttl)
		if err != nil {
			d.storeFailed(ctx, ms.name, opClaim, err, d.cfg.failOpen)
			if d.cfg.failOpen {
				return handler(ctx, req)
			}
			return nil, status.Errorf(codes.Unavailable, "grpcguard: dedup store: %v", err)
		}
		if p.Fenced && string(existing) == string(claim) {
			// The fence the lookup made in this store for this resend:
			// the first attempt never claimed the id here (the lookup
			// checked scope and age then) and waits on the fence if it
			// comes late. Run under it.
			return d.run(ctx, req, ms, handler, key, c, fp, scope, p.Advertise)
		}
		if existing == nil {
			if p.Resend {
				if code, why := d.refusal(ctx, ms.name, p, scope); why != "" {
					d.release(ctx, ms.name, key, claim, false)
					d.cfg.metrics.refuse()
					d.outcome(ctx, ms.name, OutcomeRefused)
					return nil, status.Errorf(code, "grpcguard: resend of request id refused: %s", why)
				}
			}
			return d.run(ctx, req, ms, handler, key, c, fp, scope, p.Advertise)
		}
		rec, _, w, err := d.awaitOutcome(ctx, ms.name, key, existing, fp)
		waited = waited || w
		switch {
		case err != nil:
			return nil, err
		case !rec.Done:
			continue // released or expired: claim it again
		case waited:
			d.cfg.metrics.wait()
			d.outcome(ctx, ms.name, OutcomeWaited)
		default:
			d.cfg.metrics.answer()
			d.outcome(ctx, ms.name, OutcomeAnswered)
		}
		return d.replay(ctx, info.FullMethod, ms, rec, scope, p.Advertise)
	}
	return nil, status.Errorf(codes.Aborted, "grpcguard: request id claimed and released %d times", maxClaimRounds)
}

// awaitOutcome reads the record existing that the store holds for key and,
// while its call is running, waits for it: it returns the finished record
// and its encoding, or a record not done when the claim was released or
// expired (claim again). waited reports whether it had to wait. A record of
// another request under the same id is refused with AlreadyExists. The
// interceptor and the lookup service both answer from it.
func (d *deduper) awaitOutcome(ctx context.Context, method, key string, existing []byte, fp wire.Fingerprint) (rec wire.Record, raw []byte, waited bool, err error) {
	for existing != nil {
		rec, err := wire.DecodeRecord(existing)
		if err != nil {
			return wire.Record{}, nil, waited, status.Errorf(codes.Internal, "grpcguard: dedup store holds a malformed record for this request id")
		}
		if rec.FP != fp {
			d.cfg.metrics.conflict()
			d.outcome(ctx, method, OutcomeConflict)
			return wire.Record{}, nil, waited, status.Errorf(codes.AlreadyExists, "grpcguard: request id already used with a different request (method or message)")
		}
		if rec.Done {
			return rec, existing, waited, nil
		}
		waited = true
		existing, err = d.store.Wait(ctx, key, existing)
		if ctx.Err() != nil {
			return wire.Record{}, nil, waited, status.FromContextError(ctx.Err()).Err()
		}
		if err != nil {
			d.storeFailed(ctx, method, opWait, err, false)
			return wire.Record{}, nil, waited, status.Errorf(codes.Unavailable, "grpcguard: dedup store: waiting for the running request id: %v", err)
		}
	}
	return wire.Record{}, nil, waited, nil
}

// refusal says why a resend of an id this store did not know must not run,
// and with which code, or "" when it may.
func (d *deduper) refusal(ctx context.Context, method string, r wire.Params, scope string) (codes.Code, string) {
	if r.Scope != "" && r.Scope != scope {
		return codes.FailedPrecondition, fmt.Sprintf("its first attempt may have run under dedup store scope %q, this server's is %q", r.Scope, scope)
	}
	if r.UntrustedAge {
		return codes.FailedPrecondition, fmt.Sprintf("its age (resend-age-ms=%d) was stamped before it waited for a connection: it cannot be trusted", r.Age.Milliseconds())
	}
	if keep := d.store.Retention(d.cfg.ttl); r.Age >= keep {
		return codes.FailedPrecondition, fmt.Sprintf("its first attempt began %v ago, this server keeps ids %v", r.Age, keep)
	}
	if rc, ok := d.store.(RetentionChecker); ok {
		keep, err := rc.CheckRetention(ctx, d.cfg.ttl)
		if err != nil {
			d.storeFailed(ctx, method, opClaim, err, false)
			return codes.Unavailable, fmt.Sprintf("cannot check whether the dedup store lost ids: %v", err)
		}
		if r.Age >= keep {
			return codes.FailedPrecondition, fmt.Sprintf("its first attempt began %v ago, and the dedup store may have lost ids %v ago", r.Age, keep)
		}
	}
	return codes.OK, ""
}

// run runs the handler under the claim and stores its outcome.
func (d *deduper) run(ctx context.Context, req any, ms *methodState, handler grpc.UnaryHandler,
	key string, c *dedupCall, fp wire.Fingerprint, scope string, advertise bool) (resp any, err error) {
	d.cfg.metrics.executed()
	d.outcome(ctx, ms.name, OutcomeExecuted)
	if advertise {
		d.advertise(ctx, scope)
	}
	claim, rec := c.claim[:], &c.rec
	if s := grpc.ServerTransportStreamFromContext(ctx); s != nil {
		rec.ServerTransportStream = s
		ctx = grpc.NewContextWithServerTransportStream(ctx, rec)
	}
	returned := false
	defer func() {
		if !returned { // the handler panicked: nothing is known, let a resend run
			d.release(ctx, ms.name, key, claim, true)
		}
	}()
	resp, err = handler(ctx, req)
	returned = true
	if ne, ok := errors.AsType[*notExecutedError](err); ok {
		d.release(ctx, ms.name, key, claim, true)
		return resp, ne.err
	}
	o := wire.Outcome{Header: rec.header, Trailer: rec.trailer}
	if err != nil {
		o.Status = statusOf(err).Proto()
	} else if m, ok := resp.(proto.Message); ok {
		o.Reply = m
		if ms.reply.Load() == nil {
			ms.reply.Store(&replyType{m.ProtoReflect().Type()})
		}
	} else {
		o.Status = status.New(codes.Internal, "grpcguard: this request id ran; its reply, not a protobuf message, could not be kept for a resend").Proto()
	}
	encErr := d.finish(ctx, key, claim, fp, o)
	if errors.Is(encErr, ErrStoreFull) {
		// Too large to keep: keep that the id ran, so that a resend does not
		// run it again.
		o = wire.Outcome{Status: status.New(codes.ResourceExhausted, "grpcguard: this request id ran; its reply was too large to keep for a resend").Proto()}
		encErr = d.finish(ctx, key, claim, fp, o)
	}
	if encErr != nil {
		// The reply still goes to its caller; a resend waits until the claim
		// expires, then runs.
		d.storeFailed(ctx, ms.name, opFinish, encErr, false)
	}
	return resp, err
}

// finish stores the outcome o under the claim, encoded in a pooled buffer
// (Store.Finish copies it).
func (d *deduper) finish(ctx context.Context, key string, claim []byte, fp wire.Fingerprint, o wire.Outcome) error {
	return wire.EncodeOutcome(fp, o, func(b []byte) error {
		return d.store.Finish(ctx, key, claim, b, d.cfg.ttl)
	})
}

// replay answers a duplicate with a stored outcome.
func (d *deduper) replay(ctx context.Context, method string, ms *methodState, rec wire.Record, scope string, advertise bool) (any, error) {
	o, err := rec.Outcome()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "grpcguard: dedup store holds a malformed outcome for this request id")
	}
	if advertise {
		d.advertise(ctx, scope)
	}
	_ = grpc.SetHeader(ctx, wire.ReplayedMD)
	_ = grpc.SetHeader(ctx, o.Header)
	_ = grpc.SetTrailer(ctx, o.Trailer)
	if o.Status.GetCode() != int32(codes.OK) {
		return nil, status.ErrorProto(o.Status)
	}
	mt, err := replyTypeOf(method, ms)
	if err != nil {
		// A replica that never ran the method, whose reply type is in no
		// registry: the stored bytes are the reply's encoding, sent as they
		// are, as the unknown fields of an empty message (proto.Marshal
		// writes them verbatim). The client decodes them as its own type.
		m := new(emptypb.Empty)
		m.ProtoReflect().SetUnknown(o.ReplyBytes)
		return m, nil
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(o.ReplyBytes, m); err != nil {
		return nil, status.Errorf(codes.Internal, "grpcguard: cannot decode the stored reply: %v", err)
	}
	return m, nil
}

// replyTypeOf returns the reply message type of method: the one seen when it
// ran here, or the one its descriptor names (a replica that never ran it).
func replyTypeOf(method string, ms *methodState) (protoreflect.MessageType, error) {
	if r := ms.reply.Load(); r != nil {
		return r.t, nil
	}
	service, name, _ := parseMethod(method)
	desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return nil, err
	}
	sd, ok := desc.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", service)
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return nil, fmt.Errorf("no method %s", method)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, err
	}
	ms.reply.Store(&replyType{mt})
	return mt, nil
}

// release drops the claim so that a resend runs again.
func (d *deduper) release(ctx context.Context, method, key string, claim []byte, count bool) {
	if count {
		d.cfg.metrics.release()
		d.outcome(ctx, method, OutcomeReleased)
	}
	if err := d.store.Release(ctx, key, claim); err != nil {
		d.storeFailed(ctx, method, opRelease, err, false)
	}
}

// advertise sets AdvertHeader on the response. The retention is rounded
// down to two significant digits or so, so that the header, built once per
// value, is not rebuilt for every call while a store under pressure drops ids
// at slightly different ages.
func (d *deduper) advertise(ctx context.Context, scope string) {
	ms := roundDown(d.store.Retention(d.cfg.ttl).Milliseconds())
	a := d.advert.Load()
	if now := nanotime(); a == nil || a.scope != scope || ms < a.ms || now >= a.until {
		v := wire.FormatAdvert(scope, ms)
		a = &advert{scope: scope, ms: ms, until: now + int64(advertTTL), md: metadata.MD{AdvertHeader: {v}}}
		d.advert.Store(a)
	}
	_ = grpc.SetHeader(ctx, a.md)
}

// roundDown rounds ms down to its two leading decimal digits.
func roundDown(ms int64) int64 {
	unit := int64(1)
	for ms/unit >= 100 {
		unit *= 10
	}
	return ms / unit * unit
}

// statusOf converts a handler's error as grpc-go does before sending it.
func statusOf(err error) *status.Status {
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err)
	}
	return st
}

// recorder passes a handler's metadata on to the stream and keeps a copy for
// the stored outcome.
type recorder struct {
	grpc.ServerTransportStream
	header, trailer metadata.MD
}

func (r *recorder) SetHeader(md metadata.MD) error {
	err := r.ServerTransportStream.SetHeader(md)
	if err == nil {
		r.header = metadata.Join(r.header, md)
	}
	return err
}

func (r *recorder) SendHeader(md metadata.MD) error {
	err := r.ServerTransportStream.SendHeader(md)
	if err == nil {
		r.header = metadata.Join(r.header, md)
	}
	return err
}

func (r *recorder) SetTrailer(md metadata.MD) error {
	err := r.ServerTransportStream.SetTrailer(md)
	if err == nil {
		r.trailer = metadata.Join(r.trailer, md)
	}
	return err
}

// epoch anchors the monotonic clock of the interceptor and MemoryStore: an
// int64 of nanoseconds since it fits in an atomic, unlike a time.Time.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// parseMethod splits a full method name, "/pkg.Service/Method", into its
// service and method; ok is false for anything else.
func parseMethod(fullMethod string) (service, method string, ok bool) {
	name, found := strings.CutPrefix(fullMethod, "/")
	if !found {
		return "", "", false
	}
	service, method, found = strings.Cut(name, "/")
	return service, method, found && service != "" && method != "" && !strings.Contains(method, "/")
}

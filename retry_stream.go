package grpcguard

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpcguard/grpcguard/internal/avoidtried"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// StreamClientRetry returns an interceptor that retries streams with the same
// safety rules, backoff, pushback, budget and options as UnaryClientRetry.
//
// A stream is retried when its creation fails, or when it fails before the
// first response message reached the caller; the new attempt replays what the
// caller had sent, CloseSend included. Once a response message has been
// delivered the stream is committed and never retried, so the application
// never sees a message twice; a stream whose method has a service config
// retryPolicy commits earlier, when the response headers arrive, as grpc-go
// commits it. Client and bidi streams keep the messages they send for replay
// up to WithRetryBufferSize bytes (256 KiB by default, measured with
// proto.Size; a message that is not a proto.Message cannot be measured and
// commits the stream); past it the stream commits to its current attempt.
// WithPerAttemptTimeout bounds each attempt until the stream commits.
//
// Context returns one context for the life of the stream, whatever attempts
// come and go: it is done when the stream ends or the caller's context is,
// and its values are the current attempt's (peer.FromContext gives the
// transport of the current attempt). Header and Trailer are those of the
// current attempt, which after commit is the final one. As with grpc-go,
// Header returns nil and no error if the current attempt fails before its
// headers; RecvMsg then retries it. Every abandoned attempt's context is
// cancelled, and the last one's when the stream ends, so no attempt outlives
// the stream.
//
// Install it outside the Dialer's stream interceptor, and pass
// grpc.WithDisableRetry(): grpc-go's own retry would replay streams beneath
// this one (see UnaryClientRetry for what grpc-go still retries then).
func StreamClientRetry(opts ...Option) grpc.StreamClientInterceptor {
	return standaloneState(opts).streamRetry
}

func (cs *clientState) streamRetry(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if cs.err != nil {
		return nil, cs.err
	}
	if ownedAttempt(opts) {
		return cs.newStream(ctx, desc, cc, method, streamer, opts) // an outer interceptor owns the attempts
	}
	var p plan
	if err := cs.planFor(&p, method, opts); err != nil {
		return nil, err
	}
	if !p.retries() {
		if p.callTimeout <= 0 {
			return cs.newStream(ctx, desc, cc, method, streamer, opts)
		}
		p.maxAttempts = 1 // only the call timeout applies
	}
	if cs.cfg.avoidTried && p.retries() {
		ctx = avoidtried.NewContext(ctx) // the call's attempts avoid each other's backends
	}
	s := &retryStream{cs: cs, p: p, method: method, desc: desc, cc: cc, streamer: streamer, opts: opts}
	s.ctx, s.cancelCall = ctx, func() {}
	if p.callTimeout > 0 {
		s.ctx, s.cancelCall = context.WithTimeout(ctx, p.callTimeout)
	}
	var stable context.Context
	stable, s.cancelStable = context.WithCancel(s.ctx)
	s.stable = &streamContext{Context: stable, s: s}

	s.mu.Lock()
	defer s.mu.Unlock()
	sa, err := s.start()
	if err != nil {
		if ok, lastErr := s.retryLocked(sa, err); !ok {
			s.finishLocked(lastErr)
			return nil, lastErr
		}
	} else {
		s.cur.Store(sa)
	}
	return s, nil
}

// retryStream is a client stream whose attempts the retry interceptor
// replaces until it commits.
type retryStream struct {
	cs       *clientState
	p        plan
	method   string
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	streamer grpc.Streamer
	opts     []grpc.CallOption // the caller's

	ctx          context.Context // the call's: the caller's, bounded by the call timeout
	cancelCall   context.CancelFunc
	stable       *streamContext // what Context returns
	cancelStable context.CancelFunc

	// cur is the current attempt: it changes only under mu, and is read
	// without it by Header, Trailer and Context, which must not wait for a
	// backoff.
	cur atomic.Pointer[streamAttempt]

	// mu guards what follows. It is held while an attempt is replaced,
	// backoff included, so a SendMsg waits for the replay to finish.
	mu        sync.Mutex
	n         int // attempts started
	committed bool
	buf       []any // sent messages kept for replay, until commit
	bufBytes  int
	closeSent bool
	waited    time.Duration // with no attempt in flight, before resends
	done      bool
	finalErr  error
}

// streamContext is the context of a retried stream: the same value for the
// life of the stream, done when the stream ends or the caller's context is,
// and holding the values of the current attempt's context.
type streamContext struct {
	context.Context // done when the stream ends
	s               *retryStream
}

// Value returns the current attempt's value for key: grpc's (the peer) and
// the caller's.
func (c *streamContext) Value(key any) any {
	if sa := c.s.cur.Load(); sa != nil && sa.stream != nil {
		return sa.stream.Context().Value(key)
	}
	return c.Context.Value(key)
}

// AfterFunc lets context.WithCancel and friends derive from the stream's
// context without a goroutine: they ask a parent that is not one of the
// context package's own for this method.
func (c *streamContext) AfterFunc(f func()) (stop func() bool) {
	return context.AfterFunc(c.Context, f)
}

// streamAttempt is one attempt of a retried stream. Each attempt has its own,
// so that grpc finishing an abandoned attempt never writes into the next one.
// Its per-attempt timeout runs until the stream commits.
type streamAttempt struct {
	a      attempt
	stream grpc.ClientStream // nil if creation failed
}

// start creates attempt s.n+1 and replays the buffered messages and CloseSend
// into it. A replay that fails is not an error here: the attempt's RecvMsg
// reports its status. Called with mu held.
func (s *retryStream) start() (*streamAttempt, error) {
	s.n++
	sa := &streamAttempt{}
	s.cs.begin(s.ctx, &sa.a, s.n, attemptSpec{plan: &s.p, mode: ctxStream}, s.opts)
	stream, err := s.cs.newStream(sa.a.ctx, s.desc, s.cc, s.method, s.streamer, sa.a.opts)
	if err != nil {
		return sa, err
	}
	sa.stream = stream
	for _, m := range s.buf {
		if stream.SendMsg(m) != nil {
			return sa, nil
		}
	}
	if s.closeSent {
		stream.CloseSend()
	}
	return sa, nil
}

// retryLocked decides, after attempt sa failed with err, whether the stream
// may be retried and, if so, waits and starts attempts until one is created.
// ok reports that s.cur is a new live attempt; otherwise lastErr is the
// error to return. Called with mu held.
func (s *retryStream) retryLocked(sa *streamAttempt, err error) (ok bool, lastErr error) {
	for {
		if resend, why := s.resendLocked(sa, err); !resend {
			return false, notResentError(err, why)
		}
		next, cerr := s.start()
		if cerr == nil {
			s.cur.Store(next)
			return true, nil
		}
		sa, err = next, cerr
	}
}

// resendLocked takes the after-failure step for the failure of sa and waits
// before the resend it allows; why says why it allows none. It ends sa
// whatever it decides.
func (s *retryStream) resendLocked(sa *streamAttempt, err error) (resend bool, why string) {
	defer sa.a.end()
	o := sa.a.failed(err, s.ctx, &s.p, sa.stream, s.committed)
	d := s.cs.afterFailure(s.ctx, &s.p, o, s.n)
	if !d.resend {
		return false, d.why
	}
	sa.a.end()
	waited := nanotime()
	defer func() { s.waited += time.Duration(nanotime() - waited) }()
	if sleep(s.ctx, d.wait) != nil {
		return false, ""
	}
	o.verdict.awaitRelease(s.ctx)
	return true, ""
}

// attemptResultLocked feeds the final attempt's outcome to the budget: err is
// io.EOF for a stream that ended well.
func (s *retryStream) attemptResultLocked(err error) {
	if err == io.EOF {
		s.cs.succeeded()
	} else if s.p.retryable.has(status.Code(err)) {
		s.cs.budget.result(true)
	}
}

// commitLocked makes the current attempt final: the replay buffer is dropped
// and the per-attempt timeout no longer applies.
func (s *retryStream) commitLocked() {
	s.committed = true
	s.buf, s.bufBytes = nil, 0
	if sa := s.cur.Load(); sa != nil {
		sa.a.stopTimer()
	}
}

// finishLocked ends the stream with err: the last attempt's context, the
// stream's context and the call timeout are released.
func (s *retryStream) finishLocked(err error) {
	if s.done {
		return
	}
	s.done, s.finalErr = true, err
	s.buf, s.bufBytes = nil, 0
	if sa := s.cur.Load(); sa != nil {
		sa.a.end()
	}
	s.cancelStable()
	s.cancelCall()
	if h := s.cs.cfg.hooks.OnCallEnd; h != nil {
		if err == io.EOF {
			err = nil
		}
		h(s.ctx, CallEndEvent{Method: s.method, MethodLabel: s.p.method.label, Attempts: s.n, Retries: s.n - 1, RetryDelay: s.waited, Err: err})
	}
}

// SendMsg sends m on the current attempt and keeps it for replay until the
// stream commits. If the attempt has failed, the error is left to RecvMsg,
// which retries it and replays m.
func (s *retryStream) SendMsg(m any) error {
	s.mu.Lock()
	if !s.committed && !s.done {
		size, ok := messageSize(m)
		if !ok || s.bufBytes+size > s.p.retryBufferBytes {
			s.commitLocked()
		} else {
			s.buf = append(s.buf, m)
			s.bufBytes += size
		}
	}
	sa, replayable := s.cur.Load(), !s.committed && !s.done
	s.mu.Unlock()
	err := sa.stream.SendMsg(m)
	if err == io.EOF && replayable {
		return nil
	}
	return err
}

// CloseSend closes the sending side of the current attempt, and of every
// attempt that replaces it.
func (s *retryStream) CloseSend() error {
	s.mu.Lock()
	s.closeSent = true
	sa := s.cur.Load()
	s.mu.Unlock()
	return sa.stream.CloseSend()
}

// RecvMsg receives the next message. A failure before the first message is
// retried (see StreamClientRetry); the first message commits the stream.
func (s *retryStream) RecvMsg(m any) error {
	for {
		s.mu.Lock()
		if s.done {
			err := s.finalErr
			s.mu.Unlock()
			return err
		}
		sa := s.cur.Load()
		s.mu.Unlock()

		err := sa.stream.RecvMsg(m)

		s.mu.Lock()
		if err == nil {
			if !s.committed {
				s.commitLocked()
			}
			if !s.desc.ServerStreams {
				// grpc has read the status: the stream is over, and succeeded.
				s.attemptResultLocked(io.EOF)
				s.finishLocked(io.EOF)
			}
			s.mu.Unlock()
			return nil
		}
		if sa != s.cur.Load() {
			s.mu.Unlock() // replaced meanwhile
			continue
		}
		if err != io.EOF && !s.committed {
			ok, lastErr := s.retryLocked(sa, err) // feeds the budget itself
			if ok {
				s.mu.Unlock()
				continue
			}
			err = lastErr
		} else {
			s.attemptResultLocked(err)
		}
		s.finishLocked(err)
		s.mu.Unlock()
		return err
	}
}

// Header returns the current attempt's header metadata.
func (s *retryStream) Header() (metadata.MD, error) { return s.cur.Load().stream.Header() }

// Trailer returns the current attempt's trailer metadata.
func (s *retryStream) Trailer() metadata.MD { return s.cur.Load().stream.Trailer() }

// Context returns the stream's context: the same for the life of the
// stream, done when it ends (see StreamClientRetry).
func (s *retryStream) Context() context.Context { return s.stable }

// messageSize is the size a message takes in the replay buffer: its encoded
// size. ok is false for a message it cannot measure.
func messageSize(m any) (size int, ok bool) {
	pm, ok := m.(proto.Message)
	if !ok {
		return 0, false
	}
	return proto.Size(pm), true
}

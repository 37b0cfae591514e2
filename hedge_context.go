package grpcguard

import (
	"context"
	"sync"
	"sync/atomic"
)

// originalCtx is the context of a hedged call's original attempt: the
// call's context, which the hedging interceptor can also cancel once a hedge
// has won. It exists because context.WithCancel costs more than the rest of
// hedging a call answered before its delay: grpc derives each stream's
// context from the attempt's, and under a context.WithCancel that child
// needs a map and a channel of its own on every call. Here grpc's child
// registers through AfterFunc, which the context package calls on a parent
// that has it, into a field; the channel is made once per pooled hedgeCall
// and reused as long as it was never closed. Cancelling is the slow path (a
// hedge won, the call failed while the original ran, or the caller gave up):
// the registered functions then run in goroutines of their own, as
// context.AfterFunc runs its function.
//
// Without the AfterFunc method (it is the context package's, not a promise
// of its API) the context package would watch the two contexts with a
// goroutine per stream instead: slower, not wrong.
type originalCtx struct {
	context.Context // the call's

	done       chan struct{} // closed by cancel; kept for the next call while open
	stopParent func() bool   // undoes the watch on the call's context

	cancelled atomic.Bool // err is set: Err's fast path, which grpc calls often

	mu   sync.Mutex
	err  error // set once cancelled
	regs []*afterReg
	buf  [2]*afterReg // backs regs: grpc registers one child per stream
	// reg0 serves the first registration of each call, without an
	// allocation: its stop function is bound once per originalCtx.
	reg0     afterReg
	reg0Stop func() bool
}

// afterReg is one function registered with originalCtx.AfterFunc.
type afterReg struct {
	c     *originalCtx
	f     func()
	state atomic.Int32 // regArmed, then regFired or regStopped, once
}

const (
	regArmed = iota
	regFired
	regStopped
)

// reset prepares the context for a call of ctx.
func (c *originalCtx) reset(ctx context.Context) {
	c.Context, c.err, c.regs, c.stopParent = ctx, nil, c.buf[:0], nil
	c.cancelled.Store(false)
	if c.done == nil {
		c.done = make(chan struct{})
	}
	if c.reg0Stop == nil {
		c.reg0.c, c.reg0Stop = c, c.reg0.stop
	}
	if ctx.Done() != nil {
		c.stopParent = context.AfterFunc(ctx, func() { c.cancel(ctx.Err()) })
	}
}

// clear drops what the context held of its call, keeping the channel and
// reg0.
func (c *originalCtx) clear() {
	c.Context, c.stopParent, c.err, c.regs = nil, nil, nil, nil
	c.buf = [2]*afterReg{}
	c.reg0.f = nil
}

// release ends the context's use by its call, and reports whether it may
// serve another: never cancelled, nothing registered any more, the watch on
// the call's context undone before it fired.
func (c *originalCtx) release() bool {
	reusable := c.stopParent == nil || c.stopParent()
	c.mu.Lock()
	defer c.mu.Unlock()
	return reusable && c.err == nil && len(c.regs) == 0
}

// Done is closed when the call's context is done or the attempt is
// cancelled.
func (c *originalCtx) Done() <-chan struct{} { return c.done }

// Err returns why Done was closed, or the call's context's error.
func (c *originalCtx) Err() error {
	if c.cancelled.Load() {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.err
	}
	return c.Context.Err()
}

// AfterFunc arranges for f to run, in its own goroutine, when Done is
// closed; stop undoes it. The context package calls it to derive a context
// (grpc's stream context) without a map or a goroutine.
func (c *originalCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	r, stop := &c.reg0, c.reg0Stop
	if r.f != nil || stop == nil {
		r = &afterReg{c: c}
		stop = r.stop
	}
	r.f = f
	r.state.Store(regArmed)
	if c.err != nil {
		c.mu.Unlock()
		r.fire()
		return stop
	}
	c.regs = append(c.regs, r)
	c.mu.Unlock()
	return stop
}

// fire runs f in its own goroutine, unless it ran or was stopped.
func (r *afterReg) fire() {
	if r.state.CompareAndSwap(regArmed, regFired) {
		go r.f()
	}
}

// stop unregisters r; it reports whether it stopped f from running.
func (r *afterReg) stop() bool {
	stopped := r.state.CompareAndSwap(regArmed, regStopped)
	c := r.c
	c.mu.Lock()
	for i, o := range c.regs {
		if o == r {
			c.regs = append(c.regs[:i], c.regs[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	return stopped
}

// cancel closes Done with err (context.Canceled when the hedging interceptor
// cancels), once, and runs what was registered.
func (c *originalCtx) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.cancelled.Store(true)
	regs := c.regs
	c.regs = nil
	close(c.done) // the hedgeCall is not reused: release reports it
	c.mu.Unlock()
	for _, r := range regs {
		r.fire()
	}
}

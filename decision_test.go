package grpcguard

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TestMayRetryTable: the decision for each kind of failed attempt.
func TestMayRetryTable(t *testing.T) {
	retryable := defaultConfig().call.retryable
	for _, tc := range []struct {
		name            string
		f               failure
		idempotent      bool
		ok, unprocessed bool
	}{
		{"idempotent unavailable", failure{code: codes.Unavailable}, true, true, false},
		{"non-idempotent unavailable may have run", failure{code: codes.Unavailable}, false, false, false},
		{"non-idempotent never left", failure{code: codes.Unavailable, neverLeft: true}, false, true, true},
		{"idempotent never left", failure{code: codes.Unavailable, neverLeft: true}, true, true, false},
		{"code not retryable", failure{code: codes.Internal, neverLeft: true}, true, false, false},
		{"caller done", failure{code: codes.Unavailable, neverLeft: true, callerDone: true}, true, false, false},
		{"attempt timeout idempotent", failure{code: codes.DeadlineExceeded, attemptExpiry: true}, true, true, false},
		{"attempt timeout non-idempotent", failure{code: codes.DeadlineExceeded, attemptExpiry: true}, false, false, false},
		{"attempt timeout never left", failure{code: codes.DeadlineExceeded, attemptExpiry: true, neverLeft: true}, false, true, true},
		{"caller deadline", failure{code: codes.DeadlineExceeded, callerDone: true}, true, false, false},
		{"deduplicated non-idempotent", failure{code: codes.Unavailable, deduplicated: true}, false, true, false},
		{"deduplicated but code not retryable", failure{code: codes.Internal, deduplicated: true}, false, false, false},
		{"deduplicated but caller done", failure{code: codes.Unavailable, deduplicated: true, callerDone: true}, false, false, false},
		{"deduplicated attempt timeout", failure{code: codes.DeadlineExceeded, attemptExpiry: true, deduplicated: true}, false, true, false},
		{"deduplicated and never left", failure{code: codes.Unavailable, deduplicated: true, neverLeft: true}, false, true, true},
	} {
		ok, unprocessed := mayRetry(retryable, tc.f, tc.idempotent)
		if ok != tc.ok || unprocessed != tc.unprocessed {
			t.Errorf("%s: mayRetry = %v %v, want %v %v", tc.name, ok, unprocessed, tc.ok, tc.unprocessed)
		}
	}
}

// TestMayRetrySafety checks the safety argument over every input: a resend
// needs a method that may run twice, an attempt that never left, or the
// server's deduplication; the caller's end is final; a code outside the
// plan's is resent only after the attempt's own timeout.
func TestMayRetrySafety(t *testing.T) {
	retryable := codeSetOf(codes.Unavailable)
	for _, code := range []codes.Code{codes.OK, codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Internal} {
		for bits := range 1 << 6 {
			f := failure{
				code:          code,
				callerDone:    bits&1 != 0,
				attemptExpiry: bits&2 != 0,
				neverLeft:     bits&4 != 0,
				committed:     bits&8 != 0, // the after-failure step's, not mayRetry's
				deduplicated:  bits&16 != 0,
			}
			idempotent := bits&32 != 0
			ok, unprocessed := mayRetry(retryable, f, idempotent)
			switch {
			case ok && !idempotent && !f.neverLeft && !f.deduplicated:
				t.Errorf("%+v idempotent=%v: resent although it may have run", f, idempotent)
			case ok && f.callerDone:
				t.Errorf("%+v: resent after the caller gave up", f)
			case ok && !retryable.has(code) && !f.attemptExpiry:
				t.Errorf("%+v: resent with a code the plan does not resend", f)
			case unprocessed && (!ok || !f.neverLeft || idempotent):
				t.Errorf("%+v idempotent=%v: counted as unprocessed", f, idempotent)
			}
			want := !f.callerDone && (retryable.has(code) || f.attemptExpiry) && (idempotent || f.neverLeft || f.deduplicated)
			if ok != want {
				t.Errorf("%+v idempotent=%v: mayRetry = %v, want %v", f, idempotent, ok, want)
			}
		}
	}
}

// TestAttemptFacts: attempt.failed is where every engine's facts come from.
// What grpc wrote for an attempt counts only once grpc said it finished it.
func TestAttemptFacts(t *testing.T) {
	cs := standaloneState(nil)
	unavailable := status.Error(codes.Unavailable, "x")
	start := func(p *plan, parent context.Context) *attempt {
		a := new(attempt)
		cs.begin(parent, a, 1, attemptSpec{plan: p, header: p.commitAtHeaders}, nil)
		return a
	}
	call := context.Background()
	var p plan
	p.callSettings = defaultConfig().call

	a := start(&p, call)
	a.markFinished(unavailable) // grpc failed it without a transport
	if o := a.failed(unavailable, call, &p, nil, false); !o.neverLeft || o.callerDone || o.attemptExpiry {
		t.Errorf("finished without a transport: %+v, want never left", o.failure)
	}

	a = start(&p, call) // returned beneath us, grpc not done with it
	if o := a.failed(unavailable, call, &p, nil, false); o.neverLeft {
		t.Error("an empty peer without grpc's OnFinish read as never left")
	}

	a = start(&p, call) // finished on a conn that is not a Dialer's
	a.peer = peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, LocalAddr: &net.TCPAddr{}}
	a.trailer = map[string][]string{"grpc-retry-pushback-ms": {"7"}}
	a.markFinished(unavailable)
	if o := a.failed(unavailable, call, &p, nil, false); o.neverLeft || o.verdict.remote == nil || o.trailer == nil {
		t.Errorf("a transport of the user's own: %+v, want may have run, with its remote and trailer", o)
	}

	committing := p
	committing.commitAtHeaders = true
	a = start(&committing, call)
	if o := a.failed(unavailable, call, &committing, nil, false); !o.committed || o.trailer != nil {
		t.Errorf("unknown attempt under a retryPolicy: %+v, want committed, no pushback", o)
	}
	a = start(&committing, call)
	a.markFinished(unavailable)
	if o := a.failed(unavailable, call, &committing, nil, false); o.committed {
		t.Error("committed without response headers")
	}
	a = start(&committing, call)
	a.header = map[string][]string{"k": {"v"}}
	a.markFinished(unavailable)
	if o := a.failed(unavailable, call, &committing, nil, false); !o.committed {
		t.Error("not committed after response headers")
	}

	timed := p
	timed.perAttemptTimeout = time.Millisecond
	a = start(&timed, call)
	<-a.ctx.Done()
	a.markFinished(nil)
	deadline := status.Error(codes.DeadlineExceeded, "x")
	if o := a.failed(deadline, call, &timed, nil, false); !o.attemptExpiry || o.callerDone {
		t.Errorf("per-attempt timeout: %+v, want attempt expiry", o.failure)
	}
	if o := a.failed(status.Error(codes.Internal, "x"), call, &timed, nil, false); o.attemptExpiry {
		t.Error("a failure of its own, after the timeout, read as the timeout")
	}
	done, cancel := context.WithCancel(call)
	cancel()
	a = start(&timed, done)
	a.markFinished(nil)
	if o := a.failed(status.Error(codes.Canceled, "x"), done, &timed, nil, false); !o.callerDone || o.attemptExpiry {
		t.Errorf("caller gave up: %+v, want caller done and no attempt expiry", o.failure)
	}
}

// TestDedupCoverRules: a resend relying on deduplication needs every attempt
// that may have run to have run under one store, the first well within its
// retention.
func TestDedupCoverRules(t *testing.T) {
	ms := int64(time.Millisecond)
	t0 := int64(time.Hour)
	for _, tc := range []struct {
		name string
		rec  func(c *dedupCover)
		now  int64
		want bool
	}{
		{"nothing recorded", func(c *dedupCover) {}, t0, false},
		{"one attempt under a store", func(c *dedupCover) { c.record("s1", 1000*ms, true, t0) }, t0 + 10*ms, true},
		{"near the end of the retention", func(c *dedupCover) { c.record("s1", 1000*ms, true, t0) }, t0 + 950*ms, false},
		{"two attempts, one store", func(c *dedupCover) {
			c.record("s1", 1000*ms, true, t0)
			c.record("s1", 1000*ms, true, t0+100*ms)
		}, t0 + 200*ms, true},
		{"two attempts, two stores", func(c *dedupCover) {
			c.record("s1", 1000*ms, true, t0)
			c.record("s2", 1000*ms, true, t0+100*ms)
		}, t0 + 200*ms, false},
		{"one attempt under no deduplication", func(c *dedupCover) {
			c.record("s1", 1000*ms, true, t0)
			c.record("", 0, false, t0+100*ms)
		}, t0 + 200*ms, false},
		{"the shorter retention counts", func(c *dedupCover) {
			c.record("s1", 1000*ms, true, t0)
			c.record("s1", 100*ms, true, t0+10*ms)
		}, t0 + 200*ms, false},
	} {
		var c dedupCover
		tc.rec(&c)
		if got := c.covers(tc.now); got != tc.want {
			t.Errorf("%s: covers = %v, want %v", tc.name, got, tc.want)
		}
	}
}

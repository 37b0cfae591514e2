package avoidtried

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/balancer/roundrobin"
)

func TestParseConfig(t *testing.T) {
	b := balancer.Get(Name)
	if b == nil {
		t.Fatal("not registered")
	}
	p := b.(balancer.ConfigParser)
	for _, tc := range []struct{ js, child, err string }{
		{js: `{}`, child: roundrobin.Name},
		{js: `{"childPolicy": [{"pick_first": {"shuffleAddressList": true}}]}`, child: pickfirst.Name},
		{js: `{"childPolicy": [{"no_such_policy": {}}, {"round_robin": {}}]}`, child: roundrobin.Name},
		{js: `{"childPolicy": [{"no_such_policy": {}}]}`, err: "no registered policy among no_such_policy"},
		{js: `{"childPolicy": [{"round_robin": {}, "pick_first": {}}]}`, err: "childPolicy[0]: must hold exactly one policy, got 2"},
		{js: `{"childPolicy": [{"` + Name + `": {}}]}`, err: "must not be " + Name + " itself"},
		{js: `{"childPolicy": [{"pick_first": {"shuffleAddressList": "yes"}}]}`, err: "childPolicy[0]: pickfirst"},
		{js: `[]`, err: "cannot unmarshal"},
	} {
		c, err := p.ParseConfig(json.RawMessage(tc.js))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want it to contain %q", tc.js, err, tc.err)
			}
			continue
		}
		if err != nil || c.(*config).childName != tc.child {
			t.Errorf("%s: %+v, %v; want child %s", tc.js, c, err, tc.child)
		}
	}
}

var sink context.Context

// The tried set is the context: one allocation, found from every context
// derived from it, and nowhere else.
func TestTriedContext(t *testing.T) {
	parent := context.Background()
	if n := testing.AllocsPerRun(100, func() { sink = NewContext(parent) }); n != 1 {
		t.Errorf("NewContext allocates %v times, want 1", n)
	}
	if Tried(parent) != nil || fromContext(parent) != nil {
		t.Error("a context without a tried set has one")
	}
	ctx := NewContext(parent)
	child, cancel := context.WithCancel(context.WithValue(ctx, struct{}{}, 1))
	defer cancel()
	tr := fromContext(child)
	if tr == nil || tr != fromContext(ctx) {
		t.Fatal("a derived context does not find the call's tried set")
	}
	tr.mu.Lock()
	for _, a := range []string{"a", "b", "c", "d", "e"} { // past the inline buffer
		tr.addLocked(a)
	}
	tr.mu.Unlock()
	if got := Tried(child); !slices.Equal(got, []string{"a", "b", "c", "d", "e"}) {
		t.Errorf("Tried = %v", got)
	}
	cancel()
	if child.Err() == nil || ctx.Err() != nil {
		t.Error("cancellation does not flow as through any context")
	}
}

// fakeSubConn stands for a subchannel in picker tests: only its identity
// matters to the picker.
type fakeSubConn struct {
	balancer.SubConn
	name string
}

type fixedPicker struct{ sc balancer.SubConn }

func (p fixedPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	return balancer.PickResult{SubConn: p.sc}, nil
}

// The picker keeps the child's pick of an untried backend, replaces one of a
// tried backend by an untried READY one, and keeps the child's pick when
// every ready backend was tried or the call has no tried set.
func TestPicker(t *testing.T) {
	a, b, c := &fakeSubConn{name: "a"}, &fakeSubConn{name: "b"}, &fakeSubConn{name: "c"}
	p := &picker{
		child:  fixedPicker{a},
		addrOf: map[balancer.SubConn]string{a: "10.0.0.1:1", b: "10.0.0.2:1", c: "10.0.0.3:1"},
		ready:  []readySubConn{{a, "10.0.0.1:1"}, {b, "10.0.0.2:1"}}, // c is not READY
	}
	pick := func(ctx context.Context) balancer.SubConn {
		t.Helper()
		res, err := p.Pick(balancer.PickInfo{Ctx: ctx})
		if err != nil {
			t.Fatal(err)
		}
		return res.SubConn
	}
	if got := pick(context.Background()); got != a {
		t.Errorf("without a tried set: %v, want the child's pick", got)
	}
	ctx := NewContext(context.Background())
	for i, want := range []balancer.SubConn{a, b, a} {
		if got := pick(ctx); got != want {
			t.Errorf("attempt %d: picked %v, want %v", i+1, got.(*fakeSubConn).name, want.(*fakeSubConn).name)
		}
	}
	if got := Tried(ctx); !slices.Equal(got, []string{"10.0.0.1:1", "10.0.0.2:1"}) {
		t.Errorf("tried %v", got)
	}
}

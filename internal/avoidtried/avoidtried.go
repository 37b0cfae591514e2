// Package avoidtried is a load balancing policy that sends each attempt of a
// call (a retry, a stream retry, a hedge) to a backend that no earlier attempt
// of the same call used, when one is ready: Envoy's previous_hosts retry
// predicate, and what gRFC A6 asks of hedges ("Hedged requests should be sent
// to distinct backends, if possible").
//
// It wraps a child policy (round_robin unless its config names another) and
// lets the child pick. Only when the call's context carries a tried set
// (NewContext: grpcguard's retry and hedging put one there for each call when
// WithAvoidTriedBackends is on) and the child picked the address of a backend
// the call already tried does it pick instead, round robin, a ready
// subchannel whose address the call has not tried: ready as the child counts
// it (connected, and healthy when the child watches its health). When every
// ready backend has been tried, the child's pick stands (A6 leaves that case
// to the policy). A call without a tried set is the child's alone.
//
// To see readiness and health as the child does, the policy hands the child
// subchannels of its own (subConn) that wrap grpc's, and unwraps them in
// every pick and every call back into grpc.
//
// The policy registers itself with grpc under Name when this package is
// linked in (balancer.Register in init): that is grpc's own mechanism, and
// its registry is global to the process.
package avoidtried

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/roundrobin"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// Name is the policy's name in a service config's loadBalancingConfig:
//
//	{"loadBalancingConfig": [{"grpcguard_avoid_tried_backends": {"childPolicy": [{"round_robin": {}}]}}]}
//
// childPolicy is a list like loadBalancingConfig itself: the first policy
// registered in the binary is used. Absent, it is round_robin.
const Name = "grpcguard_avoid_tried_backends"

// DefaultServiceConfig selects the policy over round_robin.
const DefaultServiceConfig = `{"loadBalancingConfig": [{"` + Name + `": {}}]}`

func init() { balancer.Register(builder{}) }

// NewContext returns ctx carrying a new, empty tried set: every attempt made
// under it records the backend it picked, and avoids those recorded. It costs
// one allocation: the set is the context.
func NewContext(ctx context.Context) context.Context { return &tried{Context: ctx} }

// Tried returns the addresses the attempts under ctx picked, in order; nil
// when ctx carries no tried set.
func Tried(ctx context.Context) []string {
	t := fromContext(ctx)
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.addrs)
}

// tried is a call's context and the set of backend addresses its attempts
// picked. It is safe for concurrent use: a call's hedges pick concurrently.
type tried struct {
	context.Context

	mu    sync.Mutex
	addrs []string // backs onto buf while it fits: a call makes few attempts
	buf   [4]string
}

type ctxKey struct{}

// Value makes the set findable under the call's context and every context
// derived from it (each attempt's, grpc's stream context).
func (t *tried) Value(key any) any {
	if key == (ctxKey{}) {
		return t
	}
	return t.Context.Value(key)
}

func (t *tried) String() string { return fmt.Sprintf("%v.WithValue(avoidtried)", t.Context) }

func fromContext(ctx context.Context) *tried {
	t, _ := ctx.Value(ctxKey{}).(*tried)
	return t
}

func (t *tried) hasLocked(addr string) bool { return slices.Contains(t.addrs, addr) }

func (t *tried) addLocked(addr string) {
	if t.addrs == nil {
		t.addrs = t.buf[:0]
	}
	t.addrs = append(t.addrs, addr)
}

// config is the policy's parsed loadBalancingConfig.
type config struct {
	serviceconfig.LoadBalancingConfig
	childName   string
	childConfig serviceconfig.LoadBalancingConfig
}

type builder struct{}

func (builder) Name() string { return Name }

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return &avoidBalancer{cc: cc, opts: opts, subConns: make(map[*subConn]struct{})}
}

// ParseConfig reads {"childPolicy": [{"<name>": {<config>}}, ...]}: the
// first policy registered in this binary is the child, its config parsed by
// its own parser.
func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	var raw struct {
		ChildPolicy []map[string]json.RawMessage `json:"childPolicy"`
	}
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	if raw.ChildPolicy == nil {
		return &config{childName: roundrobin.Name}, nil
	}
	var unknown []string
	for i, e := range raw.ChildPolicy {
		if len(e) != 1 {
			return nil, fmt.Errorf("%s: childPolicy[%d]: must hold exactly one policy, got %d", Name, i, len(e))
		}
		for name, cfg := range e {
			if name == Name {
				return nil, fmt.Errorf("%s: childPolicy[%d]: must not be %s itself", Name, i, Name)
			}
			b := balancer.Get(name)
			if b == nil {
				unknown = append(unknown, name)
				continue
			}
			c := &config{childName: name}
			if p, ok := b.(balancer.ConfigParser); ok {
				var err error
				if c.childConfig, err = p.ParseConfig(cfg); err != nil {
					return nil, fmt.Errorf("%s: childPolicy[%d]: %w", Name, i, err)
				}
			}
			return c, nil
		}
	}
	return nil, fmt.Errorf("%s: childPolicy: no registered policy among %s", Name, strings.Join(unknown, ", "))
}

// avoidBalancer runs the child policy through a ClientConn of its own, which
// sees every subchannel the child makes and every picker it publishes.
type avoidBalancer struct {
	cc   balancer.ClientConn
	opts balancer.BuildOptions

	child     balancer.Balancer
	childName string

	// mu guards subConns, the child's subchannels, and their state. grpc
	// calls the balancer and the listeners from one goroutine; the lock
	// only keeps that assumption out of the argument.
	mu       sync.Mutex
	subConns map[*subConn]struct{}
}

// subConn is a subchannel as the child policy sees it: grpc's, with its
// address and readiness recorded on the way. The picker hands grpc the
// embedded SubConn, never this one.
type subConn struct {
	balancer.SubConn // grpc's
	b                *avoidBalancer

	// Guarded by b.mu.
	addr      string
	connected bool // its connection is READY
	// health: the child watches its health (a health listener), and
	// healthy is the last word of it; the child counts it ready only then.
	health, healthy bool
}

// readyLocked reports whether the child would count the subchannel as ready.
func (sc *subConn) readyLocked() bool { return sc.connected && (!sc.health || sc.healthy) }

// RegisterHealthListener records the health the child is told of, so that a
// replacement pick never goes where the child would not (client-side health
// checking, outlier detection).
func (sc *subConn) RegisterHealthListener(listener func(balancer.SubConnState)) {
	b := sc.b
	b.mu.Lock()
	sc.health, sc.healthy = listener != nil, false
	b.mu.Unlock()
	if listener == nil {
		sc.SubConn.RegisterHealthListener(nil)
		return
	}
	sc.SubConn.RegisterHealthListener(func(s balancer.SubConnState) {
		b.mu.Lock()
		sc.healthy = s.ConnectivityState == connectivity.Ready
		b.mu.Unlock()
		listener(s)
	})
}

func (b *avoidBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	cfg, _ := s.BalancerConfig.(*config)
	if cfg == nil {
		cfg = &config{childName: roundrobin.Name}
	}
	if b.child == nil || b.childName != cfg.childName {
		if b.child != nil {
			b.child.Close()
		}
		cb := balancer.Get(cfg.childName)
		if cb == nil {
			return fmt.Errorf("%s: child policy %q is not registered", Name, cfg.childName)
		}
		b.child, b.childName = cb.Build(&childCC{ClientConn: b.cc, b: b}, b.opts), cfg.childName
	}
	return b.child.UpdateClientConnState(balancer.ClientConnState{ResolverState: s.ResolverState, BalancerConfig: cfg.childConfig})
}

func (b *avoidBalancer) ResolverError(err error) {
	if b.child == nil {
		b.cc.UpdateState(balancer.State{ConnectivityState: connectivity.TransientFailure, Picker: errPicker{err}})
		return
	}
	b.child.ResolverError(err)
}

// UpdateSubConnState is never called: every subchannel has a listener.
func (b *avoidBalancer) UpdateSubConnState(sc balancer.SubConn, s balancer.SubConnState) {
	if b.child != nil {
		b.child.UpdateSubConnState(sc, s)
	}
}

func (b *avoidBalancer) Close() {
	if b.child != nil {
		b.child.Close()
	}
}

func (b *avoidBalancer) ExitIdle() {
	if b.child != nil {
		b.child.ExitIdle()
	}
}

// childCC is the ClientConn the child policy sees: grpc's, with the
// subchannels and pickers watched on their way.
type childCC struct {
	balancer.ClientConn
	b *avoidBalancer
}

func (c *childCC) NewSubConn(addrs []resolver.Address, o balancer.NewSubConnOptions) (balancer.SubConn, error) {
	b, listener := c.b, o.StateListener
	sc := &subConn{b: b}
	if len(addrs) > 0 {
		sc.addr = addrs[0].Addr
	}
	// grpc calls the listener only after Connect, so after sc.SubConn is set.
	o.StateListener = func(s balancer.SubConnState) {
		b.mu.Lock()
		if s.ConnectivityState == connectivity.Shutdown {
			delete(b.subConns, sc)
		}
		sc.connected = s.ConnectivityState == connectivity.Ready
		if !sc.connected {
			sc.health, sc.healthy = false, false // grpc drops the health listener
		}
		b.mu.Unlock()
		if listener != nil {
			listener(s)
		} else if b.child != nil {
			b.child.UpdateSubConnState(sc, s) // a child still on the deprecated path
		}
	}
	inner, err := c.ClientConn.NewSubConn(addrs, o)
	if err != nil {
		return nil, err
	}
	sc.SubConn = inner
	b.mu.Lock()
	b.subConns[sc] = struct{}{}
	b.mu.Unlock()
	return sc, nil
}

// RemoveSubConn hands grpc its own subchannel.
func (c *childCC) RemoveSubConn(sc balancer.SubConn) {
	c.ClientConn.RemoveSubConn(grpcSubConn(sc)) //nolint:staticcheck // forwarded for a child that still uses it
}

func (c *childCC) UpdateAddresses(sc balancer.SubConn, addrs []resolver.Address) {
	if w, ok := sc.(*subConn); ok && len(addrs) > 0 {
		c.b.mu.Lock()
		w.addr = addrs[0].Addr
		c.b.mu.Unlock()
	}
	c.ClientConn.UpdateAddresses(grpcSubConn(sc), addrs) //nolint:staticcheck // forwarded for a child that still uses it
}

// grpcSubConn returns grpc's subchannel behind what the child holds.
func grpcSubConn(sc balancer.SubConn) balancer.SubConn {
	if w, ok := sc.(*subConn); ok {
		return w.SubConn
	}
	return sc
}

// UpdateState publishes the child's state with its picker wrapped. The
// subchannels' addresses and readiness are read now: the child publishes a
// picker after every change of a subchannel's state or health, which the
// listeners have recorded before passing it on.
func (c *childCC) UpdateState(s balancer.State) {
	if s.Picker != nil {
		p := &picker{child: s.Picker, addrOf: make(map[balancer.SubConn]string)}
		c.b.mu.Lock()
		for sc := range c.b.subConns {
			p.addrOf[sc] = sc.addr
			if sc.readyLocked() {
				p.ready = append(p.ready, readySubConn{sc.SubConn, sc.addr})
			}
		}
		c.b.mu.Unlock()
		slices.SortFunc(p.ready, func(x, y readySubConn) int { return strings.Compare(x.addr, y.addr) })
		s.Picker = p
	}
	c.ClientConn.UpdateState(s)
}

type readySubConn struct {
	sc   balancer.SubConn
	addr string
}

// errReplaced is the Done error of a child's pick that the picker replaced:
// the call did not use it.
var errReplaced = errors.New(Name + ": pick replaced by an untried backend")

// picker is the child's picker, and the subchannels as they were when the
// child published it. It is immutable but for next.
type picker struct {
	child  balancer.Picker
	addrOf map[balancer.SubConn]string // by the child's subchannel (*subConn)
	ready  []readySubConn              // grpc's subchannels, sorted by address
	next   atomic.Uint32               // where the round robin over ready starts
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	res, err := p.child.Pick(info)
	if err != nil {
		return res, err
	}
	addr, known := p.addrOf[res.SubConn]
	res.SubConn = grpcSubConn(res.SubConn) // grpc takes only its own
	t := fromContext(info.Ctx)
	if t == nil || !known {
		return res, nil
	}
	t.mu.Lock()
	if !t.hasLocked(addr) {
		t.addLocked(addr)
		t.mu.Unlock()
		return res, nil
	}
	var alt balancer.SubConn
	if n := len(p.ready); n > 0 {
		start := int(p.next.Add(1) % uint32(n))
		for i := range n {
			r := p.ready[(start+i)%n]
			if !t.hasLocked(r.addr) {
				t.addLocked(r.addr)
				alt = r.sc
				break
			}
		}
	}
	t.mu.Unlock()
	if alt == nil {
		return res, nil // every ready backend was tried: the child's pick stands
	}
	if res.Done != nil {
		res.Done(balancer.DoneInfo{Err: errReplaced})
	}
	return balancer.PickResult{SubConn: alt, Metadata: res.Metadata}, nil
}

type errPicker struct{ err error }

func (p errPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	return balancer.PickResult{}, p.err
}

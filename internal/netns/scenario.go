//go:build linux

package netns

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Middlebox is what the router of a scenario does to idle connections.
type Middlebox int

const (
	// Conntrack: a stateful firewall forgets the idle flow and answers its
	// next packet with RST (see Net.Conntrack).
	Conntrack Middlebox = iota + 1
	// HAProxyFIN: HAProxy closes the idle connection with a FIN.
	HAProxyFIN
	// HAProxyRST: HAProxy closes it with a RST (option nolinger).
	HAProxyRST
)

func (m Middlebox) String() string {
	switch m {
	case Conntrack:
		return "conntrack"
	case HAProxyFIN:
		return "haproxy-fin"
	case HAProxyRST:
		return "haproxy-rst"
	}
	return "Middlebox(" + strconv.Itoa(int(m)) + ")"
}

// Tools returns the commands m needs besides ip, for Check.
func (m Middlebox) Tools() []string {
	if m == Conntrack {
		return []string{"nft"}
	}
	return []string{"haproxy"}
}

// Scenario is a schedule of calls through one middlebox. Zero fields take
// the defaults of issue 9's acceptance test.
type Scenario struct {
	Middlebox Middlebox
	// Idle is the middlebox's idle timeout. Default 1s; whole seconds for
	// Conntrack.
	Idle time.Duration
	// Calls per client, after one warm-up call that is not counted.
	// Default 40. They alternate Get (idempotent by its proto option) and
	// Echo (not), unless Method is set.
	Calls int
	// Method, if set (testsvc.Echo, testsvc.Get), is the method of every
	// counted call. Default: Get and Echo in turn.
	Method string
	// Each call follows a quiet gap drawn uniformly from [MinGap, MaxGap),
	// from Seed: every client gets the same gaps. Defaults 600ms, 1600ms:
	// around a 1s idle timeout.
	MinGap, MaxGap time.Duration
	Seed           uint64
	// CallTimeout bounds each call. Default 5s.
	CallTimeout time.Duration
	// Progress, if set, is called after every call of every client,
	// concurrently.
	Progress func()
}

func (s *Scenario) setDefaults() {
	if s.Idle == 0 {
		s.Idle = time.Second
	}
	if s.Calls == 0 {
		s.Calls = 40
	}
	if s.MinGap == 0 && s.MaxGap == 0 {
		s.MinGap, s.MaxGap = 600*time.Millisecond, 1600*time.Millisecond
	}
	if s.CallTimeout == 0 {
		s.CallTimeout = 5 * time.Second
	}
}

// Gaps returns the quiet gaps before each call: the same for every client.
func (s Scenario) Gaps() []time.Duration {
	s.setDefaults()
	r := rand.New(rand.NewPCG(s.Seed, 0x6d6964646c65626f))
	gaps := make([]time.Duration, s.Calls)
	for i := range gaps {
		gaps[i] = s.MinGap + time.Duration(r.Int64N(int64(s.MaxGap-s.MinGap)+1))
	}
	return gaps
}

// Client is one client of a scenario.
type Client struct {
	Name string
	// TLS: the client talks TLS to a TLS server (a certificate made for the
	// run); otherwise plain TCP.
	TLS bool
	// Options returns the client's dial options; it must dial from client
	// (client.DialContext, or a dial function wrapped with client.Wrap).
	// The transport credentials are added by Run.
	Options func(client Namespace) ([]grpc.DialOption, error)
	// Metrics, if set, gathers this client's grpcguard metrics and no
	// other's, for Result.Guard.
	Metrics prometheus.Gatherer
}

// Result is what one client saw.
type Result struct {
	Scenario string // the middlebox
	Client   string
	TLS      bool
	// Calls made (warm-up excluded), failed, and failed among the
	// idempotent ones.
	Calls, Failed, IdemFailed int
	// RanOnce and RanTwice count the calls the server ran exactly once and
	// more than once, by the id each call carries in its metadata;
	// NonIdemRanTwice those of RanTwice that are not idempotent (Echo).
	RanOnce, RanTwice, NonIdemRanTwice int
	// Errors are the distinct errors of the failed calls, at most 4.
	Errors   []string
	P50, P99 time.Duration
	// Guard holds the client's grpcguard metrics; nil without
	// Client.Metrics.
	Guard *Counters
}

// Counters are a client's grpcguard metrics after a run.
type Counters struct {
	Stale         map[string]int // stale_connections_total by reason
	Verifications map[string]int // verifications_total by result
	Retired       int            // connections_retired_total
	Horizon       time.Duration  // idle_horizon_seconds
	Retried       int            // retries_total
	Unprocessed   int            // retries_unprocessed_total
	Hedged        int            // hedges_total
	Dials         int            // dials_total{result="ok"}
	KeepAlive     time.Duration  // keepalive_seconds
}

// StaleTotal is the number of stale connections, every reason.
func (c *Counters) StaleTotal() int {
	n := 0
	for _, v := range c.Stale {
		n += v
	}
	return n
}

// idKey is the metadata key of the id every call carries.
const idKey = "grpcguard-test-call-id"

// executions counts, on the server, how many times each call id ran.
type executions struct {
	mu   sync.Mutex
	runs map[string]int
}

func (e *executions) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if ids := md.Get(idKey); len(ids) == 1 {
		e.mu.Lock()
		e.runs[ids[0]]++
		e.mu.Unlock()
	}
	return handler(ctx, req)
}

func (e *executions) count(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.runs[id]
}

// Run builds a Net with s.Middlebox on its router, a grpc-go server (and a
// TLS one when a client needs it) in its server namespace, and runs every
// client, concurrently, on the same schedule, from its client namespace.
// Everything is torn down before it returns. An error wrapping
// ErrUnsupported means the machine cannot run it.
func Run(ctx context.Context, s Scenario, clients []Client) ([]Result, error) {
	s.setDefaults()
	if s.MinGap < 0 || s.MaxGap < s.MinGap || s.Calls < 0 {
		return nil, fmt.Errorf("netns: scenario with %d calls after gaps of %v-%v", s.Calls, s.MinGap, s.MaxGap)
	}
	if err := Check(s.Middlebox.Tools()...); err != nil {
		return nil, err
	}
	n, err := New()
	if err != nil {
		return nil, err
	}
	defer n.Close()

	runs := &executions{runs: make(map[string]int)}
	targets := make(map[bool]string) // by TLS
	var clientCreds credentials.TransportCredentials
	for _, c := range clients {
		if _, ok := targets[c.TLS]; ok {
			continue
		}
		opts := []grpc.ServerOption{grpc.UnaryInterceptor(runs.intercept)}
		if c.TLS {
			srvCreds, cliCreds, err := selfSigned(ServerIP, RouterClientIP)
			if err != nil {
				return nil, err
			}
			opts, clientCreds = append(opts, grpc.Creds(srvCreds)), cliCreds
		}
		addr, stop, err := serve(n.Server, opts...)
		if err != nil {
			return nil, err
		}
		defer stop()
		targets[c.TLS] = addr
	}
	if err := n.middlebox(s, targets); err != nil {
		return nil, err
	}

	gaps := s.Gaps()
	results := make([]Result, len(clients))
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		creds := insecure.NewCredentials()
		if c.TLS {
			creds = clientCreds
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = runClient(ctx, s, n, c, callKey(i), targets[c.TLS], creds, gaps)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	// Counted once every client is done, so that an attempt still on its
	// way to the server when its call ended is counted too.
	for i := range results {
		for j := range gaps {
			switch runs.count(callID(callKey(i), j)) {
			case 0:
			case 1:
				results[i].RanOnce++
			default:
				results[i].RanTwice++
				if s.method(j) == testsvc.Echo {
					results[i].NonIdemRanTwice++
				}
			}
		}
	}
	return results, nil
}

// RunAll runs every scenario at once, each on its own Net with the clients
// that clients returns for it, and returns the results and the error of
// each, by index. A scenario whose middlebox Check refuses is not run: its
// error wraps ErrUnsupported.
func RunAll(ctx context.Context, scenarios []Scenario, clients func(Scenario) []Client) ([][]Result, []error) {
	results := make([][]Result, len(scenarios))
	errs := make([]error, len(scenarios))
	var wg sync.WaitGroup
	for i, s := range scenarios {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = Run(ctx, s, clients(s))
		}()
	}
	wg.Wait()
	return results, errs
}

// middlebox puts s.Middlebox on the router and points targets at it.
func (n *Net) middlebox(s Scenario, targets map[bool]string) error {
	switch s.Middlebox {
	case Conntrack:
		return n.Conntrack(s.Idle) // clients reach the server through the firewall
	case HAProxyFIN, HAProxyRST:
		keys := []bool{false, true}
		var routes []Route
		for _, tls := range keys {
			if addr, ok := targets[tls]; ok {
				routes = append(routes, Route{Backend: addr, NoLinger: s.Middlebox == HAProxyRST})
			}
		}
		addrs, err := n.HAProxy(s.Idle, routes...)
		if err != nil {
			return err
		}
		for _, tls := range keys {
			if _, ok := targets[tls]; ok {
				targets[tls], addrs = addrs[0], addrs[1:]
			}
		}
		return nil
	}
	return fmt.Errorf("netns: unknown middlebox %v", s.Middlebox)
}

// serve starts a grpc-go server of testsvc in ns on ServerIP.
func serve(ns Namespace, opts ...grpc.ServerOption) (addr string, stop func(), err error) {
	ln, err := ns.Listen("tcp", net.JoinHostPort(ServerIP, "0"))
	if err != nil {
		return "", nil, err
	}
	gs := grpc.NewServer(opts...)
	(&testsvc.Server{}).Register(gs)
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	return ln.Addr().String(), func() { gs.Stop(); <-done }, nil
}

// method is the method of call i: s.Method, or Get (idempotent) and Echo
// (not) in turn.
func (s Scenario) method(i int) string {
	if s.Method != "" {
		return s.Method
	}
	if i%2 == 1 {
		return testsvc.Echo
	}
	return testsvc.Get
}

// callKey names client i's calls; callID is the id of its call j.
func callKey(i int) string            { return "c" + strconv.Itoa(i) }
func callID(key string, j int) string { return key + "-" + strconv.Itoa(j) }

// runClient runs one client's schedule.
func runClient(ctx context.Context, s Scenario, n *Net, c Client, key, target string,
	creds credentials.TransportCredentials, gaps []time.Duration) (Result, error) {
	res := Result{Scenario: s.Middlebox.String(), Client: c.Name, TLS: c.TLS}
	opts, err := c.Options(n.Client)
	if err != nil {
		return res, fmt.Errorf("netns: client %s: %w", c.Name, err)
	}
	cc, err := grpc.NewClient("passthrough:///"+target, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
	if err != nil {
		return res, fmt.Errorf("netns: client %s: %w", c.Name, err)
	}
	defer cc.Close()
	call := func(method, id string) error {
		cctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, idKey, id), s.CallTimeout)
		defer cancel()
		_, err := testsvc.Call(cctx, cc, method, id)
		return err
	}
	if err := call(testsvc.Get, key+"-warm"); err != nil {
		return res, fmt.Errorf("netns: client %s: warm-up call through %v: %w", c.Name, s.Middlebox, err)
	}
	lat := make([]time.Duration, 0, len(gaps))
	for i, gap := range gaps {
		select {
		case <-time.After(gap):
		case <-ctx.Done():
			return res, ctx.Err()
		}
		method := s.method(i)
		start := time.Now()
		err := call(method, callID(key, i))
		lat = append(lat, time.Since(start))
		res.Calls++
		if err != nil {
			res.Failed++
			if method != testsvc.Echo {
				res.IdemFailed++
			}
			msg := fmt.Sprintf("%s %s", method[len("/"+testsvc.Service+"/"):], status.Convert(err))
			if len(res.Errors) < 4 && !slices.Contains(res.Errors, msg) {
				res.Errors = append(res.Errors, msg)
			}
		}
		if s.Progress != nil {
			s.Progress()
		}
	}
	slices.Sort(lat)
	res.P50, res.P99 = quantile(lat, 0.50), quantile(lat, 0.99)
	if c.Metrics != nil {
		if res.Guard, err = gather(c.Metrics); err != nil {
			return res, err
		}
	}
	return res, nil
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

// gather reads grpcguard's series from g, by their names.
func gather(g prometheus.Gatherer) (*Counters, error) {
	mfs, err := g.Gather()
	if err != nil {
		return nil, err
	}
	c := &Counters{Stale: map[string]int{}, Verifications: map[string]int{}}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := int(m.GetCounter().GetValue())
			label := func(name string) string {
				for _, l := range m.GetLabel() {
					if l.GetName() == name {
						return l.GetValue()
					}
				}
				return ""
			}
			switch mf.GetName() {
			case "grpcguard_stale_connections_total":
				c.Stale[label("reason")] += v
			case "grpcguard_verifications_total":
				c.Verifications[label("result")] += v
			case "grpcguard_connections_retired_total":
				c.Retired += v
			case "grpcguard_idle_horizon_seconds":
				c.Horizon = time.Duration(m.GetGauge().GetValue() * float64(time.Second))
			case "grpcguard_retries_total":
				c.Retried += v
			case "grpcguard_retries_unprocessed_total":
				c.Unprocessed += v
			case "grpcguard_hedges_total":
				c.Hedged += v
			case "grpcguard_dials_total":
				if label("result") == "ok" {
					c.Dials += v
				}
			case "grpcguard_keepalive_seconds":
				c.KeepAlive = time.Duration(m.GetGauge().GetValue() * float64(time.Second))
			}
		}
	}
	return c, nil
}

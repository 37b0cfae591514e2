package opentelemetry_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// check is the method the tests call: grpc-go's health check, a real
// service with generated code.
const check = "/grpc.health.v1.Health/Check"

// checkLabel is check as gRFC A66's grpc.method names it.
const checkLabel = "grpc.health.v1.Health/Check"

// healthServer answers Check: its first failFirst calls fail with
// Unavailable, and, with stallFirst, its first call waits until the caller
// gives up (a slow server that the hedge outruns).
type healthServer struct {
	healthpb.UnimplementedHealthServer
	failFirst  int32
	stallFirst bool
	calls      atomic.Int32
}

func (s *healthServer) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	n := s.calls.Add(1)
	if n <= s.failFirst {
		return nil, status.Error(codes.Unavailable, "not yet")
	}
	if s.stallFirst && n == 1 {
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// Watch fails its first failFirst streams with Unavailable before sending
// anything, then sends SERVING and ends.
func (s *healthServer) Watch(_ *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	if s.calls.Add(1) <= s.failFirst {
		return status.Error(codes.Unavailable, "not yet")
	}
	return stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

// startServer serves srv on 127.0.0.1 until the test ends.
func startServer(t *testing.T, srv healthpb.HealthServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, srv)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// newClient dials addr with front (given before grpcguard's options), then
// grpcguard's options built from opts, then after.
func newClient(t *testing.T, addr string, front, after []grpc.DialOption, opts ...grpcguard.Option) *grpc.ClientConn {
	t.Helper()
	guard, err := grpcguard.DialOptions(opts...)
	if err != nil {
		t.Fatal(err)
	}
	dopts := append(append(append(front, guard...), after...), grpc.WithTransportCredentials(insecure.NewCredentials()))
	cc, err := grpc.NewClient(addr, dopts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// callCheck calls Check once, through the generated client (which passes
// grpc.StaticMethod, as A66 asks for the method to be named).
func callCheck(t *testing.T, ctx context.Context, cc *grpc.ClientConn) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// newMeter returns a MeterProvider that reads into the returned reader.
func newMeter(t *testing.T) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	return mp, reader
}

// collect returns what reader holds now, by instrument name.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			got[m.Name] = m
		}
	}
	return got
}

// histogram returns the one data point of the histogram name, failing the
// test when there is not exactly one.
func histogram[N int64 | float64](t *testing.T, got map[string]metricdata.Metrics, name string) metricdata.HistogramDataPoint[N] {
	t.Helper()
	m, ok := got[name]
	if !ok {
		t.Fatalf("%s not recorded; have %v", name, names(got))
	}
	h, ok := m.Data.(metricdata.Histogram[N])
	if !ok || len(h.DataPoints) != 1 {
		t.Fatalf("%s: %#v, want one data point", name, m.Data)
	}
	return h.DataPoints[0]
}

// counter returns the sums of the counter name by the value of key.
func counter(t *testing.T, got map[string]metricdata.Metrics, name, key string) map[string]int64 {
	t.Helper()
	sums := map[string]int64{}
	m, ok := got[name]
	if !ok {
		return sums
	}
	s, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s: %T, want an int64 sum", name, m.Data)
	}
	for _, dp := range s.DataPoints {
		v, _ := dp.Attributes.Value(attribute.Key(key))
		sums[v.Emit()] += dp.Value
	}
	return sums
}

func names(got map[string]metricdata.Metrics) []string {
	var ns []string
	for n := range got {
		ns = append(ns, n)
	}
	return ns
}

// waitFor polls cond until it holds, failing the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closingProxy forwards TCP connections to a backend and closes the ones it
// holds on demand, with a FIN or a reset: a middlebox that drops idle
// connections.
type closingProxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	conns   []*net.TCPConn // the client sides
}

func startProxy(t *testing.T, backend string) *closingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &closingProxy{ln: ln, backend: backend}
	go p.accept()
	t.Cleanup(func() { ln.Close(); p.closeAll(true) })
	return p
}

func (p *closingProxy) addr() string { return p.ln.Addr().String() }

func (p *closingProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.backend)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c.(*net.TCPConn))
		p.mu.Unlock()
		go pipe(c, b)
		go pipe(b, c)
	}
}

func pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

// closeAll closes every client-side connection, with a reset when rst,
// else with a FIN (a half close, so that whatever the client still sends is
// read, not answered with a reset), and reports how many it closed.
func (p *closingProxy) closeAll(rst bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	for _, c := range p.conns {
		if rst {
			c.SetLinger(0)
			c.Close()
		} else {
			c.CloseWrite()
		}
	}
	p.conns = nil
	return n
}

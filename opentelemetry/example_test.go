package opentelemetry_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"sync/atomic"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/opentelemetry"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcotel "google.golang.org/grpc/stats/opentelemetry"
	"google.golang.org/grpc/status"
)

// A client with grpc-go's OpenTelemetry instrumentation and grpcguard's, in
// the order that shows one call of several attempts: grpc-go's option first.
// The server fails the first two calls with Unavailable; Check is declared
// idempotent, so grpcguard resends it.
func Example() {
	// A server that is not ready for its first two calls.
	var calls atomic.Int32
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		if calls.Add(1) <= 2 {
			return status.Error(codes.Unavailable, "warming up")
		}
		if err := stream.RecvMsg(new(healthpb.HealthCheckRequest)); err != nil {
			return err
		}
		return stream.SendMsg(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
	}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()

	// One MeterProvider for grpc-go's metrics and grpcguard's.
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	target := "passthrough:///" + lis.Addr().String()
	hooks, err := opentelemetry.Hooks(opentelemetry.Options{MeterProvider: mp, Target: target})
	if err != nil {
		log.Fatal(err)
	}
	guard, err := grpcguard.DialOptions(grpcguard.WithHooks(hooks),
		grpcguard.WithIdempotentMethods("/grpc.health.v1.Health/Check"))
	if err != nil {
		log.Fatal(err)
	}
	// grpc-go's option before grpcguard's: its interceptor is then outside
	// grpcguard's, and sees one call.
	opts := append([]grpc.DialOption{grpcotel.DialOption(grpcotel.Options{
		MetricsOptions: grpcotel.MetricsOptions{MeterProvider: mp},
	})}, guard...)
	cc, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	if _, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		log.Fatal(err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch m.Name {
			case "grpc.client.call.retries": // grpcguard's
				d := m.Data.(metricdata.Histogram[int64]).DataPoints[0]
				fmt.Printf("%s: %d call, %d retries\n", m.Name, d.Count, d.Sum)
			case "grpc.client.call.duration": // grpc-go's
				fmt.Printf("%s: %d call\n", m.Name, m.Data.(metricdata.Histogram[float64]).DataPoints[0].Count)
			case "grpc.client.attempt.started": // grpc-go's
				fmt.Printf("%s: %d\n", m.Name, m.Data.(metricdata.Sum[int64]).DataPoints[0].Value)
			}
		}
	}
	// Unordered output:
	// grpc.client.attempt.started: 3
	// grpc.client.call.duration: 1 call
	// grpc.client.call.retries: 1 call, 2 retries
}

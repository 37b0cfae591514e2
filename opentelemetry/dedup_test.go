package opentelemetry_test

import (
	"context"
	"net"
	"testing"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/grpcguard/grpcguard/opentelemetry"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// TestDedupOutcomes: a call with a request id runs once (executed) and its
// resend is answered from the stored outcome (answered), each counted once
// by method.
func TestDedupOutcomes(t *testing.T) {
	mp, reader := newMeter(t)
	h, err := opentelemetry.DedupHooks(opentelemetry.Options{MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	sd := dedup.NewServer(nil, dedup.WithHooks(h))
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(sd.UnaryServerInterceptor()))
	hs := &healthServer{}
	healthpb.RegisterHealthServer(srv, hs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	cc := newClient(t, lis.Addr().String(), nil, nil)
	ctx := metadata.AppendToOutgoingContext(context.Background(), dedup.RequestIDHeader, "id-1")
	for range 2 {
		if err := callCheck(t, ctx, cc); err != nil {
			t.Fatal(err)
		}
	}
	if n := hs.calls.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want once", n)
	}
	got := collect(t, reader)
	by := counter(t, got, "grpcguard.dedup.outcomes", "grpcguard.outcome")
	if by[dedup.OutcomeExecuted] != 1 || by[dedup.OutcomeAnswered] != 1 || len(by) != 2 {
		t.Errorf("outcomes %v, want executed and answered once each", by)
	}
	if methods := counter(t, got, "grpcguard.dedup.outcomes", "grpc.method"); methods[checkLabel] != 2 {
		t.Errorf("outcomes by grpc.method %v, want %q twice", methods, checkLabel)
	}
}

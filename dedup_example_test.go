package grpcguard_test

import (
	"context"
	"errors"
	"log"

	"github.com/grpcguard/grpcguard"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// A server that runs each request id at most once, with ids scoped by the
// caller's TLS identity so that no caller can reach another's.
func ExampleUnaryServerDedup() {
	metrics := grpcguard.NewDedupMetrics()
	prometheus.MustRegister(metrics)

	byCaller := grpcguard.WithDedupKey(func(ctx context.Context, id string) (string, error) {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return "", status.Error(codes.Unauthenticated, "no peer")
		}
		tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || len(tlsInfo.State.PeerCertificates) == 0 {
			return "", status.Error(codes.Unauthenticated, "no client certificate")
		}
		return tlsInfo.State.PeerCertificates[0].Subject.String() + "/" + id, nil
	})
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(
		grpcguard.UnaryServerDedup(nil, byCaller, grpcguard.WithDedupMetrics(metrics)),
	))
	_ = srv // register services, then srv.Serve(listener)
}

// A handler that knows it changed nothing says so, so that a resend of the
// same request id runs it again instead of getting this error back.
func ExampleNotExecuted() {
	errDBDown := errors.New("database unreachable")
	charge := func(ctx context.Context) error {
		if err := errDBDown; err != nil { // before the transaction began
			return grpcguard.NotExecuted(status.Error(codes.Unavailable, err.Error()))
		}
		return nil
	}
	if err := charge(context.Background()); err != nil {
		log.Print(err)
	}
}

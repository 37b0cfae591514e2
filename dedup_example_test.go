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
	dedup := grpcguard.NewServerDedup(nil, byCaller, grpcguard.WithDedupMetrics(metrics))
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(dedup.UnaryServerInterceptor()))
	dedup.RegisterService(srv) // the same key function scopes the lookups
	_ = srv                    // register services, then srv.Serve(listener)
}

// A server whose clients may learn its deduplication from its responses
// registers the dedup service next to the interceptor: a client resends a
// call that may have run only after that service answered for the call's
// id, so that a resend never runs on a replica without deduplication.
func ExampleNewServerDedup() {
	dedup := grpcguard.NewServerDedup(nil) // a MemoryStore; redisstore for replicas
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(dedup.UnaryServerInterceptor()))
	dedup.RegisterService(srv)
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

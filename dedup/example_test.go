package dedup_test

import (
	"context"
	"errors"
	"log"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// A server that runs each request id at most once, with ids scoped by the
// caller's TLS identity so that no caller can reach another's.
func ExampleUnaryServerInterceptor() {
	metrics := dedup.NewMetrics()
	prometheus.MustRegister(metrics)

	byCaller := dedup.WithKey(func(ctx context.Context, id string) (string, error) {
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
	sd := dedup.NewServer(nil, byCaller, dedup.WithMetrics(metrics))
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(sd.UnaryServerInterceptor()))
	sd.RegisterService(srv) // the same key function scopes the lookups
	_ = srv                 // register services, then srv.Serve(listener)
}

// A server whose clients may learn its deduplication from its responses
// registers the dedup service next to the interceptor: a client resends a
// call that may have run only after that service answered for the call's
// id, so that a resend never runs on a replica without deduplication.
func ExampleNewServer() {
	sd := dedup.NewServer(nil) // a MemoryStore; redisstore for replicas
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(sd.UnaryServerInterceptor()))
	sd.RegisterService(srv)
	_ = srv // register services, then srv.Serve(listener)
}

// A handler that knows it changed nothing says so, so that a resend of the
// same request id runs it again instead of getting this error back.
func ExampleNotExecuted() {
	errDBDown := errors.New("database unreachable")
	charge := func(ctx context.Context) error {
		if err := errDBDown; err != nil { // before the transaction began
			return dedup.NotExecuted(status.Error(codes.Unavailable, err.Error()))
		}
		return nil
	}
	if err := charge(context.Background()); err != nil {
		log.Print(err)
	}
}

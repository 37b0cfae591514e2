package dedup_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"sync/atomic"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
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

// A payment service under deduplication: the second call with the same
// request id (a resend, sent by hand here; grpcguard clients send it
// themselves) is answered from the store, marked as replayed, and the
// handler ran once.
func Example() {
	sd := dedup.NewServer(nil) // a MemoryStore; redisstore shares ids between replicas
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(sd.UnaryServerInterceptor()))
	sd.RegisterService(srv)
	var runs atomic.Int32
	pay := func(ctx context.Context, req any) (any, error) {
		runs.Add(1)
		return wrapperspb.String("paid " + req.(*wrapperspb.StringValue).GetValue()), nil
	}
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "example.Payments",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Pay", Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			return icpt(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/example.Payments/Pay"}, pay)
		}}},
	}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Stop()
	cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	ctx := metadata.AppendToOutgoingContext(context.Background(), dedup.RequestIDHeader, "order-7")
	for range 2 {
		out := new(wrapperspb.StringValue)
		var hdr metadata.MD
		err := cc.Invoke(ctx, "/example.Payments/Pay", wrapperspb.String("7 EUR"), out, grpc.Header(&hdr))
		fmt.Println(out.GetValue(), err, hdr.Get(dedup.ReplayedHeader))
	}
	fmt.Println("runs:", runs.Load())
	// Output:
	// paid 7 EUR <nil> []
	// paid 7 EUR <nil> [1]
	// runs: 1
}

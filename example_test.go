package grpcguard_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Check a connection from your own pool before reusing it: Probe reads
// nothing and never blocks.
func ExampleProbe() {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	pooled, _ := net.Dial("tcp", ln.Addr().String())
	defer pooled.Close()
	server, _ := ln.Accept()

	fmt.Println("before:", grpcguard.Probe(pooled))
	server.Close() // the server times the idle connection out

	var stale *grpcguard.StaleConnError
	if err := grpcguard.Probe(pooled); errors.As(err, &stale) {
		fmt.Println("after:", stale.Reason, errors.Is(err, grpcguard.ErrStaleConn))
	}
	// Output:
	// before: <nil>
	// after: peer_closed true
}

// Dial through a Dialer and install its interceptors, innermost, so that idle
// connections are probed before each RPC picks one.
func ExampleNewDialer() {
	addr, stop, err := testsvc.Serve(&testsvc.Server{})
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	metrics := grpcguard.NewMetrics()
	prometheus.NewRegistry().MustRegister(metrics) // your own registry

	d := grpcguard.NewDialer(grpcguard.WithMetrics(metrics))
	defer d.Close()
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(d.DialContext),
		grpc.WithChainUnaryInterceptor(d.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(d.StreamClientInterceptor()),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	reply, err := testsvc.Call(context.Background(), cc, testsvc.Echo, "hello")
	fmt.Println(reply, err)
	// Output: hello <nil>
}

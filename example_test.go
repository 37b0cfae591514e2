package grpcguard_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	mwretry "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
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

// The one-line drop-in: everything grpcguard adds, for grpc.NewClient.
func ExampleDialOptions() {
	addr, stop, err := testsvc.Serve(&testsvc.Server{})
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	opts, err := grpcguard.DialOptions()
	if err != nil {
		log.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr,
		append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	reply, err := testsvc.Call(context.Background(), cc, testsvc.Get, "hello")
	fmt.Println(reply, err)
	// Output: hello <nil>
}

// Methods that may run twice are retried even after the request may have
// reached the server. List them, or declare them in the .proto:
//
//	rpc Get(GetRequest) returns (GetReply) { option idempotency_level = NO_SIDE_EFFECTS; }
func ExampleWithIdempotentMethods() {
	_, err := grpcguard.DialOptions(
		grpcguard.WithIdempotentMethods("/shop.Catalog/*", "/shop.Cart/GetCart"),
		grpcguard.WithMaxAttempts(4),
	)
	fmt.Println(err)
	// Output: <nil>
}

// Hedging: a second attempt after the p95 latency of the method's recent
// calls (adaptive) or after a fixed delay; the first answer wins and the
// others are cancelled. Only idempotent methods are hedged.
func ExampleUnaryClientHedge() {
	hedge := grpcguard.UnaryClientHedge(
		grpcguard.WithHedgeDelay(30*time.Millisecond),
		grpcguard.WithMaxAttempts(2),
		grpcguard.WithIdempotentMethods("/shop.Catalog/*"),
	)
	_ = grpc.WithChainUnaryInterceptor(hedge) // outermost, then retry, then the Dialer's
	// With DialOptions, asking for a hedge delay installs hedging:
	_, err := grpcguard.DialOptions(grpcguard.WithAdaptiveHedgeDelay(0.95, 5*time.Millisecond, time.Second))
	fmt.Println(err)
	// Output: <nil>
}

// Metrics go on your own registry; one Metrics may serve a whole client.
func ExampleNewMetrics() {
	reg := prometheus.NewRegistry()
	m := grpcguard.NewMetrics(grpcguard.WithConstLabels(prometheus.Labels{"client": "billing"}))
	reg.MustRegister(m)
	_, err := grpcguard.DialOptions(grpcguard.WithMetrics(m))
	fmt.Println(err)
	// Output: <nil>
}

// A gRFC A6 service config: retry and hedging policies per method, with
// grpc-go's matching rules. grpc-go ignores hedgingPolicy; grpcguard runs it.
func ExampleWithServiceConfig() {
	_, err := grpcguard.DialOptions(grpcguard.WithServiceConfig(`{
	  "methodConfig": [
	    {"name": [{"service": "shop.Catalog"}],
	     "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
	                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}},
	    {"name": [{"service": "shop.Search", "method": "Query"}],
	     "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.05s"}}
	  ],
	  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
	}`))
	fmt.Println(err)

	_, err = grpcguard.DialOptions(grpcguard.WithServiceConfig(`{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 1}}]}`))
	fmt.Println(errors.Is(err, grpcguard.ErrInvalidOption))
	// Output:
	// <nil>
	// true
}

// Chaining with go-grpc-middleware/v2: its selector hedges only some
// methods, and its BackoffFunc drives grpcguard's retry.
func Example_goGRPCMiddleware() {
	hedgeSearch := selector.UnaryClientInterceptor(
		grpcguard.UnaryClientHedge(grpcguard.WithHedgeDelay(20*time.Millisecond)),
		selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool { return c.Service == "shop.Search" }),
	)
	d := grpcguard.NewDialer()
	defer d.Close()
	retry := grpcguard.UnaryClientRetry(
		grpcguard.WithBackoffFunc(mwretry.BackoffExponentialWithJitter(50*time.Millisecond, 0.2)),
		grpcguard.WithIdempotentMethods("/shop.Search/*"),
	)
	opts := []grpc.DialOption{
		grpc.WithContextDialer(d.DialContext),
		grpc.WithChainUnaryInterceptor(hedgeSearch, retry, d.UnaryClientInterceptor()),
		grpc.WithDisableRetry(), // grpc-go's own retry would multiply attempts
	}
	fmt.Println(len(opts))
	// Output: 3
}

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
	"google.golang.org/grpc/metadata"
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
// others are cancelled. Only idempotent methods are hedged. With
// DialOptions, asking for a hedge delay turns hedging on; built by hand, the
// hedging interceptor goes outermost and gets the same options as the retry.
func ExampleUnaryClientHedge() {
	_, err := grpcguard.DialOptions(grpcguard.WithHedgeDelay(30 * time.Millisecond))
	fmt.Println(err)

	opts := []grpcguard.Option{
		grpcguard.WithHedgeDelay(30 * time.Millisecond),
		grpcguard.WithMaxAttempts(2),
		grpcguard.WithIdempotentMethods("/shop.Catalog/*"),
	}
	d := grpcguard.NewDialer(opts...)
	defer d.Close()
	_ = grpc.WithChainUnaryInterceptor(grpcguard.UnaryClientHedge(opts...), grpcguard.UnaryClientRetry(opts...), d.UnaryClientInterceptor())
	// Output: <nil>
}

// Per-call options: a CallOption overrides the client's setting for one
// call. Options about the whole client (WithKeepAlive, WithRetryBudget,
// WithServiceConfig, WithMetrics, ...) are ClientOptions, which are not
// grpc.CallOptions: passing one to a call does not compile.
func ExampleCallOption() {
	addr, stop, err := testsvc.Serve(&testsvc.Server{})
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	opts, err := grpcguard.DialOptions(grpcguard.WithMaxAttempts(4))
	if err != nil {
		log.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	ctx := context.Background()
	reply, err := testsvc.Call(ctx, cc, testsvc.Get, "once", grpcguard.WithRetryDisabled())
	fmt.Println(reply, err)
	reply, err = testsvc.Call(ctx, cc, testsvc.Get, "hedged", grpcguard.WithHedgeDelay(50*time.Millisecond), grpcguard.WithPerAttemptTimeout(time.Second))
	fmt.Println(reply, err)
	// Output:
	// once <nil>
	// hedged <nil>
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

// Chaining with go-grpc-middleware/v2: its selector hedges only one method,
// and its BackoffFunc drives grpcguard's retry. Built by hand, every
// interceptor gets the same options (here the hedged method must be known as
// idempotent to the hedging interceptor too, or it hedges nothing), and each
// has its own budget; DialOptions shares one.
func Example_goGRPCMiddleware() {
	srv := &testsvc.Server{Unary: func(ctx context.Context, _, req string) (string, error) {
		if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("grpc-previous-rpc-attempts")) == 0 {
			<-ctx.Done() // the original attempt is a straggler
			return "", ctx.Err()
		}
		return req, nil
	}}
	addr, stop, err := testsvc.Serve(srv)
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	common := []grpcguard.Option{
		grpcguard.WithIdempotentMethods("/grpcguard.testing.Echo/*"),
		grpcguard.WithBackoffFunc(mwretry.BackoffExponentialWithJitter(50*time.Millisecond, 0.2)),
	}
	hedgeGet := selector.UnaryClientInterceptor(
		grpcguard.UnaryClientHedge(append(common, grpcguard.WithHedgeDelay(20*time.Millisecond))...),
		selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool { return c.Method == "Get" }),
	)
	d := grpcguard.NewDialer(common...)
	defer d.Close()
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(d.DialContext),
		grpc.WithChainUnaryInterceptor(hedgeGet, grpcguard.UnaryClientRetry(common...), d.UnaryClientInterceptor()),
		grpc.WithDisableRetry(), // grpc-go's own retry would multiply attempts
	)
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := testsvc.Call(ctx, cc, testsvc.Get, "hedged")
	fmt.Println(reply, err)
	// Output: hedged <nil>
}

// An idle horizon set by hand: a connection idle for WithMaxIdle is retired
// before the next call can pick it (closed, released by grpc, redialed), so
// the call never meets the middlebox that would have killed it. Without the
// option the horizon is learned from the idle age at which connections die.
func ExampleWithMaxIdle() {
	addr, stop, err := testsvc.Serve(&testsvc.Server{})
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	m := grpcguard.NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	opts, err := grpcguard.DialOptions(grpcguard.WithMetrics(m), grpcguard.WithMaxIdle(50*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	testsvc.Call(ctx, cc, testsvc.Echo, "before")
	time.Sleep(80 * time.Millisecond) // idle past the horizon
	_, err = testsvc.Call(ctx, cc, testsvc.Echo, "after")
	fmt.Println("call after idle:", err)
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "grpcguard_connections_retired_total" {
			for _, s := range mf.GetMetric() {
				if s.GetLabel()[0].GetValue() == "max_idle" {
					fmt.Println("connections retired:", s.GetCounter().GetValue())
				}
			}
		}
	}
	// Output:
	// call after idle: <nil>
	// connections retired: 1
}

package grpcguard_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"sync/atomic"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Keep your own dial function (a SOCKS or CONNECT dialer, a cloud connector,
// a mesh dialer, or, here, a net.Dialer with settings of its own): every
// connection grpc uses comes from it, and grpcguard probes it through its
// socket. The function gets the address grpc would pass to
// grpc.WithContextDialer, so one written for that works unchanged.
func ExampleWithDialFunc() {
	addr, stop, err := testsvc.Serve(&testsvc.Server{})
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	var dials atomic.Int32
	nd := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		return nd.DialContext(ctx, "tcp", addr)
	}

	opts, err := grpcguard.DialOptions(grpcguard.WithDialFunc(dial))
	if err != nil {
		log.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr,
		append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := testsvc.Call(ctx, cc, testsvc.Echo, "hello")
	fmt.Println(reply, err, "dials:", dials.Load())
	// Output: hello <nil> dials: 1
}

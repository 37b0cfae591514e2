//go:build linux

package main

import (
	"net"
	"time"

	"github.com/grpcguard/grpcguard"
	"github.com/grpcguard/grpcguard/internal/netns"
	"google.golang.org/grpc"
)

// delayWire is the delay path: the server listens in the server namespace
// of a netns.Delayed wire, the clients dial from its client namespace, plain
// grpc-go as its default dialer would (netns.Namespace.DialContext),
// grpcguard through a dial function with the socket options its own Dialer
// sets by default (guardNetDialer), as the real-middlebox rows do.
func delayWire(oneWay time.Duration) (*quietWire, error) {
	d, err := netns.NewDelayed(oneWay)
	if err != nil {
		return nil, err
	}
	return &quietWire{
		name: "delay " + oneWay.String() + " each way",
		listen: func() (net.Listener, error) {
			return d.Server.Listen("tcp", net.JoinHostPort(netns.DelayServerIP, "0"))
		},
		plain: []grpc.DialOption{grpc.WithContextDialer(d.Client.DialContext)},
		guard: []grpcguard.Option{grpcguard.WithDialFunc(d.Client.Wrap(guardNetDialer()))},
		close: d.Close,
	}, nil
}

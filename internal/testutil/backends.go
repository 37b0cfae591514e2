package testutil

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
)

// Load balancing service configs for tests over Backends.
const (
	RoundRobinConfig = `{"loadBalancingConfig":[{"round_robin":{}}]}`
	PickFirstConfig  = `{"loadBalancingConfig":[{"pick_first":{}}]}`
)

// Backends is three loopback servers, each behind its own fault proxy.
type Backends struct {
	Srvs    [3]*testsvc.Server
	Proxies [3]*faultproxy.Proxy
	// landed records, per request, where each attempt ran:
	// "b<backend>/a<previous attempts>".
	mu     sync.Mutex
	landed map[string][]string
}

// StartBackends starts the servers and proxies until t ends; unary is each
// server's hook (nil echoes), given the backend's index.
func StartBackends(t *testing.T, unary func(i int, ctx context.Context, method, req string) (string, error)) *Backends {
	t.Helper()
	b := &Backends{landed: make(map[string][]string)}
	for i := range b.Srvs {
		b.Srvs[i] = &testsvc.Server{Unary: func(ctx context.Context, method, req string) (string, error) {
			b.mu.Lock()
			b.landed[req] = append(b.landed[req], fmt.Sprintf("b%d/a%d", i, PreviousAttempts(ctx)))
			b.mu.Unlock()
			if unary == nil {
				return req, nil
			}
			return unary(i, ctx, method, req)
		}}
		b.Proxies[i] = StartProxy(t, StartServer(t, b.Srvs[i]), faultproxy.Config{})
	}
	return b
}

// Runs is how many times req of method ran on all backends together.
func (b *Backends) Runs(method, req string) int {
	n := 0
	for _, s := range b.Srvs {
		n += s.Runs(method, req)
	}
	return n
}

// Where returns where each attempt of req ran, in order:
// "b<backend>/a<previous attempts>".
func (b *Backends) Where(req string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.landed[req])
}

// WarmAll makes calls on cc until every backend has served one since the
// call.
func (b *Backends) WarmAll(t *testing.T, cc *grpc.ClientConn, tag string) {
	t.Helper()
	var before [3]int
	for i, s := range b.Srvs {
		before[i] = s.Calls()
	}
	for n := 0; ; n++ {
		all := true
		for i, s := range b.Srvs {
			all = all && s.Calls() > before[i]
		}
		if all {
			return
		}
		if n == 100 {
			t.Fatalf("%s: 100 calls did not reach every backend", tag)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := testsvc.Call(ctx, cc, testsvc.Get, fmt.Sprintf("warm-%s-%d", tag, n), grpc.WaitForReady(true))
		cancel()
		if err != nil {
			t.Fatalf("%s: warm-up: %v", tag, err)
		}
	}
}

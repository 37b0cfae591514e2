package grpcguard

import (
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/faultproxy"
	"github.com/grpcguard/grpcguard/internal/testsvc"
)

func TestSmoke(t *testing.T) {
	srv := &testsvc.Server{}
	p := startProxy(t, startServer(t, srv), faultproxy.Config{Mode: faultproxy.RSTAfterIdle, Idle: 50 * time.Millisecond})
	m := NewMetrics()
	cc, _ := guardedClient(t, p.Addr(), WithMetrics(m), WithProbeAfterIdle(10*time.Millisecond))
	for i := range 6 {
		if _, err := testsvc.Call(ctxTimeout(t, 5*time.Second), cc, testsvc.Echo, "x"); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		time.Sleep(time.Duration(i%2) * 80 * time.Millisecond)
	}
	t.Logf("proxy %+v stale %d", p.Stats(), staleTotal(m))
}

package grpcguard

import (
	"context"
	"fmt"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"google.golang.org/grpc"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// The probe against the floor of one syscall, in the same run:
//
//	go test -run '^$' -bench 'Probe|Getpid' -benchmem -count 5 . | benchstat -
func BenchmarkGetpid(b *testing.B) {
	for b.Loop() {
		syscall.Getpid()
	}
}

func BenchmarkProbe(b *testing.B) {
	d := NewDialer()
	defer d.Close()
	c := benchPair(b, d.DialContext)
	b.ReportAllocs()
	for b.Loop() {
		if err := Probe(c); err != nil {
			b.Fatal(err)
		}
	}
}

// A 4 KiB Write on a busy conn (never idle, so never probed), wrapped and
// plain, in the same run:
//
//	go test -run '^$' -bench 'Write4K' -benchmem -count 10 . | benchstat -
func BenchmarkWrite4KPlain(b *testing.B) {
	c := benchPair(b, dialTCP)
	benchWrite(b, c)
}

func BenchmarkWrite4KWrapped(b *testing.B) {
	d := NewDialer()
	defer d.Close()
	c := benchPair(b, d.DialContext)
	benchWrite(b, c)
}

func benchWrite(b *testing.B, c net.Conn) {
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// The per-RPC cost of the check before the pick when nothing is due: 1,000
// live conns, none idle long enough to probe or retire. It reads the clock and
// one atomic, whatever the number of conns:
//
//	go test -run '^$' -bench 'ProbeBeforePick' -benchmem .
func BenchmarkProbeBeforePick(b *testing.B) {
	for _, n := range []int{3, 1000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			d := NewDialer(WithProbeAfterIdle(time.Hour), WithMaxIdle(0))
			defer d.Close()
			for range n {
				benchPair(b, d.DialContext)
			}
			ctx := context.Background()
			d.beforePick(ctx, 0) // the first pick scans once
			b.ReportAllocs()
			for b.Loop() {
				d.beforePick(ctx, 0)
			}
		})
	}
}

// benchPair dials a loopback listener through dial; the far end discards.
func benchPair(b *testing.B, dial func(context.Context, string) (net.Conn, error)) net.Conn {
	c, s := loopbackPair(b, dial)
	discard(b, c, s)
	return c
}

// discard drains s until the benchmark ends, then closes both ends.
func discard(b *testing.B, c, s net.Conn) {
	done := make(chan struct{})
	go func() { defer close(done); io.Copy(io.Discard, s) }()
	b.Cleanup(func() { c.Close(); s.Close(); <-done })
}

// Unary Echo over loopback, plain grpc-go against a client made with
// DialOptions, in the same run:
//
//	go test -run '^$' -bench 'Echo' -benchmem -count 10 . | benchstat -
func BenchmarkEchoPlain(b *testing.B) {
	benchEcho(b, newClient(b, startServer(b, &testsvc.Server{})))
}

func BenchmarkEchoDialOptions(b *testing.B) {
	opts, err := DialOptions()
	if err != nil {
		b.Fatal(err)
	}
	benchEcho(b, newClient(b, startServer(b, &testsvc.Server{}), opts...))
}

func benchEcho(b *testing.B, cc *grpc.ClientConn) {
	ctx := context.Background()
	if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "warm"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := testsvc.Call(ctx, cc, testsvc.Echo, "x"); err != nil {
			b.Fatal(err)
		}
	}
}

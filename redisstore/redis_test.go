package redisstore

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// redisServer is a redis-server the test started on 127.0.0.1 with a port
// of its own and a temporary directory, never a system one.
type redisServer struct {
	addr string
	cmd  *exec.Cmd
	dir  string
	bin  string
	port int
	done chan struct{}
}

// launch starts redis-server on r's port and directory, without persistence.
func (r *redisServer) launch() error {
	r.done = make(chan struct{})
	r.cmd = exec.Command(r.bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(r.port), "--dir", r.dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
		"--logfile", filepath.Join(r.dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		return err
	}
	done := r.done
	go func() { r.cmd.Wait(); close(done) }()
	return nil
}

// restart kills the server and starts a new one on the same port: what it
// held is lost, as in a restart without persistence.
func (r *redisServer) restart(t testing.TB) {
	t.Helper()
	r.stop()
	if err := r.launch(); err != nil {
		t.Fatal(err)
	}
	if !r.waitUp(5 * time.Second) {
		t.Fatal("redis-server did not come back")
	}
}

// startRedis starts redis-server for the test, or skips it with one line when
// it cannot. It is stopped when the test ends.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed (Debian package redis-server); skipping the Redis store tests")
	}
	dir := t.TempDir()
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		r := &redisServer{addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir, bin: bin, port: port}
		if err := r.launch(); err != nil {
			t.Skipf("redis-server cannot start (%v); skipping the Redis store tests", err)
		}
		if r.waitUp(5 * time.Second) {
			t.Cleanup(r.stop)
			return r
		}
		r.stop()
	}
	log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
	t.Skipf("redis-server did not come up on 127.0.0.1; skipping the Redis store tests. Log: %.300s", log)
	return nil
}

func (r *redisServer) waitUp(within time.Duration) bool {
	c := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case <-r.done:
			return false
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// stop kills the server and waits for it.
func (r *redisServer) stop() {
	select {
	case <-r.done:
		return
	default:
	}
	r.cmd.Process.Kill()
	<-r.done
}

// client returns a client of r, closed when the test ends. Retries are off,
// so that a dead server is seen at once.
func (r *redisServer) client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1, DialTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	return c
}

// store returns a Store on a new client of r, closed when the test ends.
func (r *redisServer) store(t testing.TB, opts Options) *Store {
	s := New(r.client(t), opts)
	t.Cleanup(func() { s.Close() })
	return s
}

func (r *redisServer) String() string { return fmt.Sprintf("redis-server at %s", r.addr) }

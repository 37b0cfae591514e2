package test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/testsvc"
	"github.com/grpcguard/grpcguard/internal/testutil"
)

// startNginx runs nginx in the foreground as an HTTP/2 gRPC proxy on
// 127.0.0.1 in front of backend, closing client conns idle keepalive, and
// returns its address. It skips t without nginx (Debian package nginx-light).
func startNginx(t *testing.T, backend string, keepalive time.Duration) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			t.Skip("skipped: the nginx command is not installed (Debian package nginx-light)")
		}
		bin = "/usr/sbin/nginx"
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	var conf bytes.Buffer
	fmt.Fprintf(&conf, "pid %s;\nevents { worker_connections 64; }\nhttp {\n\taccess_log off;\n", filepath.Join(dir, "nginx.pid"))
	for _, tmp := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&conf, "\t%s_temp_path %s;\n", tmp, filepath.Join(dir, tmp))
	}
	fmt.Fprintf(&conf, "\tserver {\n\t\tlisten %s http2;\n\t\tkeepalive_timeout %dms;\n\t\tlocation / { grpc_pass grpc://%s; }\n\t}\n}\n",
		addr, keepalive.Milliseconds(), backend)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, conf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	errLog := filepath.Join(dir, "error.log")
	cmd := exec.Command(bin, "-p", dir, "-e", errLog, "-c", path, "-g", "daemon off; master_process off;")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(errLog)
			t.Fatalf("nginx exited: %s %s", out.String(), log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx does not listen on %s after 10s", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Behind nginx (grpc_pass, keepalive_timeout 1s), an idle conn is closed
// with GOAWAY and a FIN 1s after its last reply. The GOAWAY's bytes are not
// activity: the idle-age histogram puts each death at about 1s, not at the
// 0.1ms between GOAWAY and FIN, and a close announced by GOAWAY retires
// nothing. No call fails.
func TestNginxGoAwayIdleAge(t *testing.T) {
	if testing.Short() {
		t.Skip("nginx: skipped in -short mode (seconds of idle)")
	}
	proxy := startNginx(t, testutil.StartServer(t, &testsvc.Server{}), time.Second)
	cc, reg := guardClient(t, proxy)
	const gaps = 3
	for i := range gaps + 1 {
		if i > 0 {
			time.Sleep(1500 * time.Millisecond) // the scenario: nginx closes the idle conn
		}
		if _, err := testsvc.Call(testutil.CtxTimeout(t, 5*time.Second), cc, testsvc.Echo, fmt.Sprint(i)); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	h := testutil.Histogram(t, reg, "grpcguard_stale_connection_idle_seconds")
	n, sum := h.GetSampleCount(), h.GetSampleSum()
	if n < gaps-1 {
		t.Fatalf("%d deaths in the idle-age histogram for %d closes by nginx", n, gaps)
	}
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == 0.5 && b.GetCumulativeCount() != 0 {
			t.Errorf("%d of %d deaths recorded under 0.5s of idle (mean %.4fs); want all at nginx's 1s", b.GetCumulativeCount(), n, sum/float64(n))
		}
		if b.GetUpperBound() == 2 && b.GetCumulativeCount() != n {
			t.Errorf("only %d of %d deaths recorded under 2s of idle (mean %.4fs)", b.GetCumulativeCount(), n, sum/float64(n))
		}
	}
	if mean := sum / float64(n); mean < 0.9 || mean > 1.3 {
		t.Errorf("mean idle age at death %.4fs, want about 1s", mean)
	}
	if r := metric(t, reg, "grpcguard_connections_retired_total", nil); r != 0 {
		t.Errorf("%v conns retired after closes announced by GOAWAY", r)
	}
	t.Logf("%d deaths behind nginx, mean idle age %.4fs", n, sum/float64(n))
}

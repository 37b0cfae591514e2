package grpcguard

import (
	"syscall"
	"testing"
	"time"
)

func TestDialerSetsSocketOptions(t *testing.T) {
	d := NewDialer(WithKeepAlive(7*time.Second, 3*time.Second, 4), WithUserTimeout(9*time.Second))
	defer d.Close()
	c, _ := dialPair(t, d)
	var sc syscall.Conn = c // channelz and users reach the socket through it
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	rc.Control(func(fd uintptr) {
		for name, opt := range map[string][2]int{
			"SO_KEEPALIVE":     {syscall.SOL_SOCKET, syscall.SO_KEEPALIVE},
			"TCP_KEEPIDLE":     {syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE},
			"TCP_KEEPINTVL":    {syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL},
			"TCP_KEEPCNT":      {syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT},
			"TCP_USER_TIMEOUT": {syscall.IPPROTO_TCP, 18},
		} {
			v, err := syscall.GetsockoptInt(int(fd), opt[0], opt[1])
			if err != nil {
				t.Errorf("getsockopt %s: %v", name, err)
			}
			got[name] = v
		}
	})
	want := map[string]int{"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 7, "TCP_KEEPINTVL": 3, "TCP_KEEPCNT": 4, "TCP_USER_TIMEOUT": 9000}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
}

func TestDialerDefaultsSetKeepAliveAndUserTimeout(t *testing.T) {
	d := NewDialer()
	defer d.Close()
	c, _ := dialPair(t, d)
	rc, _ := c.SyscallConn()
	var ka, ut int
	rc.Control(func(fd uintptr) {
		ka, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		ut, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, 18)
	})
	if ka != 1 || ut != int(DefaultUserTimeout.Milliseconds()) {
		t.Fatalf("SO_KEEPALIVE = %d, TCP_USER_TIMEOUT = %d; want 1 and %d", ka, ut, DefaultUserTimeout.Milliseconds())
	}
}

func TestUserTimeoutRoundsUpToAMillisecond(t *testing.T) {
	d := NewDialer(WithUserTimeout(500 * time.Microsecond))
	defer d.Close()
	c, _ := dialPair(t, d)
	rc, _ := c.SyscallConn()
	var ut int
	rc.Control(func(fd uintptr) { ut, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, 18) })
	if ut != 1 {
		t.Fatalf("TCP_USER_TIMEOUT = %d ms for 500µs, want 1 (0 would mean the kernel's ~15 minutes)", ut)
	}
}

package grpcguard

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// setUserTimeout sets TCP_USER_TIMEOUT, which grpc-go sets itself only on an
// unwrapped *net.TCPConn.
func setUserTimeout(rc syscall.RawConn, d time.Duration) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int((d+time.Millisecond-1)/time.Millisecond))
	})
	if err != nil {
		return err
	}
	return serr
}

package grpcguard

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// probeFD polls fd once with a zero timeout. POLLRDHUP reports the peer's FIN
// even behind unread data, and poll, unlike recv(MSG_PEEK), leaves a pending
// SO_ERROR for grpc's reader to see.
//
// A zero-timeout poll cannot block, so it is a raw syscall: skipping the
// scheduler hand-off of a blocking one halves the probe's cost.
func probeFD(fd uintptr) probeResult {
	fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
	var zero unix.Timespec
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), 1,
			uintptr(unsafe.Pointer(&zero)), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return probeUnknown
		}
		if n == 0 {
			return probeAlive
		}
		break
	}
	switch re := fds[0].Revents; {
	case re&(unix.POLLERR|unix.POLLNVAL) != 0:
		return probeReset
	case re&unix.POLLHUP != 0:
		return probePeerClosed
	case re&unix.POLLRDHUP != 0:
		// FIN. Data in front of it is a reply grpc's reader has yet to
		// deliver: closing the socket now would destroy it.
		var pending int32
		_, _, errno := unix.RawSyscall(unix.SYS_IOCTL, fd, unix.SIOCINQ, uintptr(unsafe.Pointer(&pending)))
		if errno == 0 && pending > 0 {
			return probeDraining
		}
		return probePeerClosed
	}
	return probeAlive // POLLIN alone: unread data, such as a TLS session ticket
}

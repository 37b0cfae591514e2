//go:build unix && !linux

package grpcguard

import "golang.org/x/sys/unix"

// probeFD polls fd once with a zero timeout and, only when it is readable,
// peeks at one byte without consuming it: 0 bytes is the peer's FIN. Without
// POLLRDHUP a FIN behind unread data cannot be seen; the conn then reads as
// alive and grpc's reader meets the FIN after the data.
func probeFD(fd uintptr) probeResult {
	fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds[:], 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return probeUnknown
		}
		if n == 0 {
			return probeAlive
		}
		break
	}
	if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
		return probeReset
	}
	var b [1]byte
	for {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.ECONNRESET:
			return probeReset
		case err != nil:
			return probeAlive // EAGAIN: nothing to read after all
		case n == 0:
			return probePeerClosed
		}
		return probeAlive
	}
}

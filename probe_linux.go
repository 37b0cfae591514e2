package grpcguard

import "golang.org/x/sys/unix"

// probeFD polls fd once with a zero timeout. POLLRDHUP reports the peer's FIN
// even behind unread data, and poll, unlike recv(MSG_PEEK), leaves a pending
// SO_ERROR for grpc's reader to see.
func probeFD(fd uintptr) probeResult {
	fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
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
	switch re := fds[0].Revents; {
	case re&(unix.POLLERR|unix.POLLNVAL) != 0:
		return probeReset
	case re&(unix.POLLHUP|unix.POLLRDHUP) != 0:
		return probePeerClosed
	}
	return probeAlive // POLLIN alone: unread data, such as a TLS session ticket
}

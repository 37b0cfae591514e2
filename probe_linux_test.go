package grpcguard

import "golang.org/x/sys/unix"

// bytesReadable returns the bytes waiting in fd's receive queue.
func bytesReadable(fd uintptr) int {
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil {
		return 0
	}
	return n
}

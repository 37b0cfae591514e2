//go:build !unix

package grpcguard

// probeFD cannot look at a socket without consuming from it on this platform:
// Windows sockets in Go are not in non-blocking mode, so a peek could block.
// Every conn is reported alive; TCP keepalive and TCP timeouts find dead peers.
func probeFD(fd uintptr) probeResult { return probeUnknown }

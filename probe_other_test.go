//go:build !linux

package grpcguard

// bytesReadable cannot ask the kernel portably; the tests that use it wait
// for the data by other means where it matters.
func bytesReadable(uintptr) int { return 1 }

//go:build !linux

package grpcguard

import (
	"syscall"
	"time"
)

// setUserTimeout does nothing: TCP_USER_TIMEOUT is Linux-only.
func setUserTimeout(syscall.RawConn, time.Duration) error { return nil }

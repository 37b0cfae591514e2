//go:build !linux

package grpcguard

import (
	"syscall"
	"time"
)

// pathCheck has no implementation outside Linux: see pathcheck.go.
type pathCheck struct{}

func (p *pathCheck) init(syscall.RawConn) {}

func (p *pathCheck) ok() bool { return false }

func (p *pathCheck) verify(time.Duration) verifyResult { return verifyUnanswered }

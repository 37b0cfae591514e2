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

func (p *pathCheck) verify() verifyResult { return verifyUnanswered }

func (p *pathCheck) pathIdle() (time.Duration, bool) { return 0, false }

func (p *pathCheck) setKeepAliveIdle(time.Duration) {}

func socketPathIdle(syscall.RawConn) (time.Duration, bool) { return 0, false }

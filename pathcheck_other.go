//go:build !linux

package grpcguard

import "syscall"

// pathCheck has no implementation outside Linux: see pathcheck.go.
type pathCheck struct{}

func (p *pathCheck) init(syscall.RawConn) {}

func (p *pathCheck) ok() bool { return false }

func (p *pathCheck) verify() verifyResult { return verifyUnanswered }

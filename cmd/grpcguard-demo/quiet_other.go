//go:build !linux

package main

import (
	"errors"
	"time"
)

// delayWire needs Linux: network namespaces and TUN devices.
func delayWire(time.Duration) (*quietWire, error) {
	return nil, errors.New("the delay wire needs Linux network namespaces")
}

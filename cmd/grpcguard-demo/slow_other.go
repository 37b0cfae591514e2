//go:build !linux

package main

import (
	"fmt"
	"io"
)

// runSlowConntrack says why the slow row does not run here: it needs Linux
// network namespaces.
func runSlowConntrack(out io.Writer, _ uint64) (ok bool) {
	fmt.Fprintln(out, "\nconntrack firewall (netns): skipped: it needs Linux network namespaces")
	return true
}

//go:build !linux

package main

import (
	"fmt"
	"io"

	"github.com/prometheus/client_golang/prometheus"
)

// middleboxScenario is the -scenario name of the real-middlebox scenarios.
const middleboxScenario = "middlebox"

// runMiddleboxes says why the real-middlebox scenarios do not run here: they
// need Linux network namespaces.
func runMiddleboxes(tw io.Writer, only string, _ int, _ uint64, _ *prometheus.Registry) (ok bool, ran int) {
	if only == "all" || only == middleboxScenario {
		fmt.Fprintln(tw, "real middleboxes skipped: they need Linux network namespaces")
	}
	return true, 0
}

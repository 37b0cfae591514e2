package testutil

import (
	"testing"

	"go.uber.org/goleak"
)

// Main is the TestMain of the root package and of test/: it waits for the
// lock the two share (see lockPackage), runs the tests, and fails them if a
// goroutine outlives them.
func Main(m *testing.M) {
	if err := lockPackage(); err != nil {
		panic(err)
	}
	goleak.VerifyTestMain(m)
}

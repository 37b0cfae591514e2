package dedup

import (
	"testing"

	"github.com/grpcguard/grpcguard/internal/testutil"
)

// TestMain shares the lock of the root package and test/ (testutil.Main):
// the soak here counts on its schedule as they do on theirs.
func TestMain(m *testing.M) {
	testutil.Main(m)
}

// Helpers shared with the root package's tests. newClient dials with a
// plain grpc.NewClient: the server half is tested against calls that carry
// the ids the test gives them, with no grpcguard client in between.
var (
	startServer   = testutil.StartServer
	startProxy    = testutil.StartProxy
	newClient     = testutil.NewClient
	ctxTimeout    = testutil.CtxTimeout
	waitFor       = testutil.WaitFor
	serveLoopback = testutil.ServeLoopback
)

package grpcguard

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoOpenTelemetryLinked: grpc-go's go.mod requires OpenTelemetry modules,
// so they are in grpcguard's module graph, but no OpenTelemetry package is
// linked into a binary that imports grpcguard (or its demo) without asking
// for it: the integration lives in the module
// github.com/grpcguard/grpcguard/opentelemetry.
func TestNoOpenTelemetryLinked(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list dependencies with")
	}
	out, err := exec.Command(goCmd, "list", "-deps", ".", "./cmd/grpcguard-demo").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	pkgs := strings.Fields(string(out))
	if len(pkgs) < 10 || !strings.Contains(string(out), "google.golang.org/grpc\n") {
		t.Fatalf("go list -deps listed %d packages, not grpcguard's: %s", len(pkgs), out)
	}
	for _, p := range pkgs {
		if strings.HasPrefix(p, "go.opentelemetry.io/") {
			t.Errorf("%s is linked into grpcguard or its demo", p)
		}
	}
}

package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestQuietRows runs the quiet callers for 2 rounds on loopback and checks
// that the table has both clients' rows, with every call made and none
// failed, the server's accepts counted, grpcguard's path checks, and the
// ratio.
func TestQuietRows(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out strings.Builder
	if err := runQuietRows(&out, []string{"loopback"}, 2, 1200*time.Millisecond, 1300*time.Millisecond, 1, false); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	for _, row := range []string{
		`loopback +plain grpc-go +2 +0 +1 +- +[0-9.]+ms +[0-9.]+ms *\n`,
		`\n +grpcguard +2 +0 +[1-9][0-9]* +[0-9]+ +[0-9.]+ms +[0-9.]+ms +[0-9.]+x *\n`,
	} {
		if !regexp.MustCompile(row).MatchString(out.String()) {
			t.Errorf("no row matching %q", row)
		}
	}
	if !strings.Contains(out.String(), "grpcguard/plain (median of rounds)") {
		t.Error("no header")
	}
}

// TestParsePaths: the -quiet-paths flag takes loopback and delay, nothing
// else.
func TestParsePaths(t *testing.T) {
	if got, err := parsePaths(" loopback, delay,"); err != nil || strings.Join(got, ",") != "loopback,delay" {
		t.Fatalf("parsePaths: %q, %v", got, err)
	}
	if _, err := parsePaths("loopback,netem"); err == nil {
		t.Fatal("parsePaths accepted netem")
	}
}

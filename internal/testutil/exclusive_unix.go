//go:build unix

package testutil

import (
	"os"
	"path/filepath"
	"syscall"
)

// lockedEnv is set, in the environment of a test binary that holds the
// lock, for the processes it starts (a child run of the same binary): they
// are covered by their parent's lock.
const lockedEnv = "GRPCGUARD_TEST_LOCKED"

// lockPackage blocks until this test binary holds the lock that every
// grpcguard test binary (the root package, test/ and dedup) takes in
// TestMain (Main), and keeps it until the
// process exits. go test ./... runs packages in parallel; the root
// package's tests and the end-to-end tests in test/ each load both cores
// under -race and measure behaviour that depends on timing (a call 0.97 of
// an idle timeout after the last): run together, each starves the other's
// schedules (TestMemoryStoreSoakEveryIDRunsOnce and TestE2EIdleRace failed so).
// Serialized, the two take about as long as the root package alone did
// before test/ existed.
func lockPackage() error {
	if os.Getenv(lockedEnv) != "" {
		return nil
	}
	// A raw descriptor, never closed: no finalizer can release the lock
	// before the process ends.
	fd, err := syscall.Open(filepath.Join(os.TempDir(), "grpcguard-test.lock"), syscall.O_CREAT|syscall.O_RDWR|syscall.O_CLOEXEC, 0o666)
	if err != nil {
		return err
	}
	for {
		err = syscall.Flock(fd, syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		syscall.Close(fd)
		return err
	}
	return os.Setenv(lockedEnv, "1")
}

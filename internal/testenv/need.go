package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Need returns the path of program on PATH. When it is missing the test is
// skipped, or failed when CI=true: CI must not go green by skipping the
// integration tests it exists to run.
func Need(t testing.TB, program string) string {
	t.Helper()
	return need(t, program, os.Getenv("CI") == "true")
}

func need(t testing.TB, program string, ci bool) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err == nil {
		return path
	}
	if ci {
		t.Fatalf("testenv: %s is required when CI=true: %v", program, err)
	} else {
		t.Skipf("testenv: skipping, %s not available: %v", program, err)
	}
	return ""
}

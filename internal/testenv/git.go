package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Git runs git in dir with a fixed author, committer and commit time (at),
// so commits are reproducible; it fails the test on an error and returns
// the trimmed output.
func Git(t testing.TB, dir string, at time.Time, args ...string) string {
	t.Helper()
	date := at.UTC().Format(time.RFC3339)
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_DATE="+date, "GIT_COMMITTER_DATE="+date,
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

package gitsrc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// A checkout holds the commit's tree with the commit's time on every
// entry and no .git; a ref resolves to its commit, a tag to the commit it
// names; a moved ref is refused rather than checked out.
func TestResolveAndCheckout(t *testing.T) {
	testenv.Need(t, "git")
	repo := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		return testenv.Git(t, repo, time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC), args...)
	}
	if err := os.MkdirAll(filepath.Join(repo, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "d/f"), []byte("f\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run("init", "-q", "-b", "main")
	run("add", ".")
	run("commit", "-q", "-m", "one")
	run("tag", "-a", "-m", "t", "v1")
	head := run("rev-parse", "HEAD")
	ctx := context.Background()
	for _, ref := range []string{"", "main", "v1", head} {
		if got, err := Resolve(ctx, repo, ref); err != nil || got != head {
			t.Errorf("Resolve(%q) = %s, %v; want %s", ref, got, err, head)
		}
	}
	if _, err := Resolve(ctx, repo, "nope"); err == nil {
		t.Error("Resolve of a missing ref succeeded")
	}
	dir := t.TempDir()
	if err := Checkout(ctx, repo, "main", head, dir, Options{}); err != nil {
		t.Fatal(err)
	}
	want := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	for _, p := range []string{"d", "d/f"} {
		fi, err := os.Lstat(filepath.Join(dir, p))
		if err != nil || !fi.ModTime().Equal(want) {
			t.Errorf("%s: mtime %v (%v), want the commit's %v", p, fi.ModTime(), err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
		t.Error(".git kept without KeepGitDir")
	}
	// The ref moves after Resolve: the checkout refuses.
	if err := os.WriteFile(filepath.Join(repo, "d/f"), []byte("g\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run("commit", "-q", "-am", "two")
	if err := Checkout(ctx, repo, "main", head, t.TempDir(), Options{}); err == nil || !strings.Contains(err.Error(), "moved") {
		t.Errorf("Checkout after the ref moved = %v, want a refusal", err)
	}
}

func TestRedact(t *testing.T) {
	got := Redact("fatal: unable to access 'https://bob:ghp_secret@127.0.0.1/r.git/': refused")
	if strings.Contains(got, "ghp_secret") || strings.Contains(got, "bob") || !strings.Contains(got, "https://xxxxx@127.0.0.1/r.git/") {
		t.Errorf("Redact = %q", got)
	}
}

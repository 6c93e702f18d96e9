package solver

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-build/kiln/internal/buildctx"
	"github.com/kiln-build/kiln/internal/progress"
	"github.com/kiln-build/kiln/internal/testenv"
)

// onStart runs fn once, when the step whose name contains what starts:
// after its cache key was computed, before it reads the context.
type onStart struct {
	what string
	once sync.Once
	fn   func()
}

func (s *onStart) Emit(e progress.Event) {
	if e.Status == progress.Started && strings.Contains(e.Name, s.what) {
		s.once.Do(s.fn)
	}
}

// TestCopyOfAContextFileChangedAfterItsKeyCachesNothing rewrites a context
// file between the moment COPY's key is computed and the copy. The step
// must fail and record nothing: before, it cached the new bytes under the
// old bytes' key, and the next build of the old bytes (another runner, a
// revert) got the new ones from the cache.
func TestCopyOfAContextFileChangedAfterItsKeyCachesNothing(t *testing.T) {
	cacheDir := t.TempDir()
	const df = "FROM scratch\nCOPY app/ /app/\n"
	files := map[string]string{"app/a.txt": "old\n", "app/b.txt": "b\n"}
	_, err := buildScratch(t, df, files, func(o *Options) {
		o.CacheDir = cacheDir
		o.Progress = &onStart{what: "COPY app/", fn: func() {
			if err := os.WriteFile(filepath.Join(o.ContextDir, "app/a.txt"), []byte("new\n"), 0o644); err != nil {
				t.Error(err)
			}
		}}
	})
	// The Dockerfile error keeps the message, not the chain.
	want := `Dockerfile:2: COPY: context file "app/a.txt" ` + buildctx.ErrChanged.Error() + `; nothing was cached (run the build again)`
	if err == nil || err.Error() != want {
		t.Fatalf("build whose context changed under COPY: err = %v, want %q", err, want)
	}

	// The same context as the failed build hashed, in the same cache: it
	// must copy the bytes it has, not a cached layer of other bytes.
	img, err := buildScratch(t, df, files, func(o *Options) { o.CacheDir = cacheDir })
	if err != nil {
		t.Fatal(err)
	}
	if got := string(testenv.Tree(t, img)["app/a.txt"].Content); got != "old\n" {
		t.Errorf("/app/a.txt = %q after a build of %q: a layer of other bytes was cached under its key", got, "old\n")
	}
}

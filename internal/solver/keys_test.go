package solver

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/cachekey"
	"github.com/kiln-build/kiln/internal/plan"
	"github.com/kiln-build/kiln/internal/progress"
)

var update = flag.Bool("update", false, "rewrite golden files")

// keysDockerfile has every kind of layer step kiln caches.
const keysDockerfile = `ARG GLOBAL=g
FROM scratch AS base
ARG VERSION=1
ENV HOME=/root
WORKDIR /w
COPY a.txt dir/ /w/
COPY --chown=1000:1000 --chmod=0640 a.txt /owned
COPY --exclude=*.md dir/ /excl/
ADD archive.tar /x/
ADD --checksum=sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae http://127.0.0.1:1/foo.txt /dl/
COPY <<EOF /inline.txt
v=$VERSION
EOF
USER 1000
RUN echo plain
RUN ["/bin/echo", "exec"]
RUN --network=none --mount=type=cache,target=/cache,id=c,sharing=locked --mount=type=secret,id=tok,env=TOK --mount=type=tmpfs,target=/t,size=1024 --mount=type=bind,source=dir,target=/src echo mounts
RUN <<EOT
echo heredoc
EOT

FROM base AS child
COPY --from=base /w/a.txt /from-stage
RUN --mount=type=bind,from=base,source=/w,target=/b echo from-stage
`

// keysFor returns the key of every layer step, as "stage name => key".
//
// A plan knows a step's key once its parent's result is known, so the
// keys are read from plans alone, never running a step: each step the
// plan misses is given a stand-in result (cachekey.UnbuiltResult of its
// key, a diffID no real layer has) in kiln's local cache, and the build is
// planned again, until every step hits.
func keysFor(t *testing.T, dockerfile string, files map[string]string, mutate func(*Options)) []string {
	t.Helper()
	dir := t.TempDir()
	for p, c := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root := t.TempDir()
	o := Options{ContextDir: dir, Dockerfile: []byte(dockerfile), Parallelism: 1, TempDir: t.TempDir(), CacheDir: root, DryRun: true, Progress: progress.Discard}
	if mutate != nil {
		mutate(&o)
	}
	local, err := cache.OpenLocal(filepath.Join(root, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	blob := static.NewLayer([]byte("a stand-in for a step never run"), types.OCILayer)
	desc := cache.Descriptor{MediaType: types.OCILayer}
	if desc.Digest, err = blob.Digest(); err != nil {
		t.Fatal(err)
	}
	if desc.Size, err = blob.Size(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 100 {
		res, err := Build(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		missed := false
		for _, s := range res.Plan.Stages {
			for _, st := range s.Steps {
				keys = append(keys, fmt.Sprintf("%s %s => %s", s.Name, st.Name, st.Key))
				if st.Status != plan.Miss {
					continue
				}
				missed = true
				key := digest.Digest(st.Key)
				d := desc
				d.DiffID, _ = v1.NewHash(cachekey.UnbuiltResult(key).String())
				if err := local.Put(ctx, cache.Record{Key: key, Layer: d, StepID: st.ID}, blob); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !missed {
			return keys
		}
	}
	t.Fatal("the plan never came to hit every step")
	return nil
}

var keyFiles = map[string]string{
	"a.txt":       "a\n",
	"dir/b.txt":   "b\n",
	"dir/c.md":    "c\n",
	"archive.tar": "not really a tar, but bytes all the same\n",
}

// TestKeysGolden pins the key of every kind of step. Keys live forever
// once shipped: a change here orphans every cache. Run with -update only
// when the change is intended (and cachekey.Version was bumped).
func TestKeysGolden(t *testing.T) {
	got := strings.Join(keysFor(t, keysDockerfile, keyFiles, nil), "\n") + "\n"
	golden := filepath.Join("testdata", "keys.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/solver -run TestKeysGolden -update)", err)
	}
	if got != string(want) {
		t.Errorf("cache keys changed:\n got:\n%s\nwant:\n%s", got, want)
	}
}

func diffKeys(a, b []string) (same, changed []string) {
	for i := range a {
		name := strings.Split(a[i], " => ")[0]
		if i < len(b) && a[i] == b[i] {
			same = append(same, name)
		} else {
			changed = append(changed, name)
		}
	}
	return
}

// Keys follow content, never mtimes.
func TestKeysIgnoreMtimes(t *testing.T) {
	before := keysFor(t, keysDockerfile, keyFiles, nil)
	after := keysFor(t, keysDockerfile, keyFiles, func(o *Options) {
		future := time.Now().Add(48 * time.Hour)
		filepath.Walk(o.ContextDir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, future, future) })
	})
	if _, changed := diffKeys(before, after); len(changed) > 0 {
		t.Errorf("keys changed with mtimes only: %v", changed)
	}
}

// Changing one file changes the steps that read it and everything after
// them, and nothing before.
func TestKeysFollowContent(t *testing.T) {
	files := map[string]string{}
	for k, v := range keyFiles {
		files[k] = v
	}
	before := keysFor(t, keysDockerfile, files, nil)
	files["dir/c.md"] = "changed\n" // excluded by COPY --exclude, read by COPY dir/ and the bind mount
	after := keysFor(t, keysDockerfile, files, nil)
	same, changed := diffKeys(before, after)
	if len(same) != 1 || !strings.Contains(changed[0], "COPY a.txt dir/ /w/") {
		t.Errorf("same %v, changed %v: only the steps before `COPY a.txt dir/` may keep their keys", same, changed)
	}
}

// Only the ARGs a step can see are in its key; secrets by id only.
func TestKeysArgsAndSecrets(t *testing.T) {
	base := keysFor(t, keysDockerfile, keyFiles, nil)
	undeclared := keysFor(t, keysDockerfile, keyFiles, func(o *Options) { o.BuildArgs = map[string]string{"UNUSED": "x", "GLOBAL": "other"} })
	if _, changed := diffKeys(base, undeclared); len(changed) > 0 {
		t.Errorf("an ARG no stage declares changed keys: %v", changed)
	}
	version := keysFor(t, keysDockerfile, keyFiles, func(o *Options) { o.BuildArgs = map[string]string{"VERSION": "2"} })
	same, changed := diffKeys(base, version)
	// VERSION is not read by WORKDIR/COPY/ADD, but the heredoc expands it
	// and every RUN sees it in its environment.
	if len(same) != 6 || !strings.Contains(changed[0], "COPY <<EOF /inline.txt") {
		t.Errorf("same %v, changed %v", same, changed)
	}
	secret := keysFor(t, keysDockerfile, keyFiles, func(o *Options) { o.Secrets = map[string]Secret{"tok": {Value: []byte("s3cret")}} })
	if _, changed := diffKeys(base, secret); len(changed) > 0 {
		t.Errorf("a secret's value reached the keys: %v", changed)
	}
}

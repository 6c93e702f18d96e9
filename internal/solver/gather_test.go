package solver

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/output"
)

// imageResult is a built image's config and the paths of its files.
type imageResult struct {
	cf    *v1.ConfigFile
	files []string
}

// buildLayout builds df in ctxDir into an OCI layout at out and reads the
// image back.
func buildLayout(t *testing.T, ctxDir, df, out string, mut func(*Options)) imageResult {
	t.Helper()
	spec, err := output.Parse("type=oci,tar=false,dest=" + out)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{ContextDir: ctxDir, Dockerfile: []byte(df), Parallelism: 2, Outputs: []output.Spec{spec}, TempDir: t.TempDir()}
	if mut != nil {
		mut(&o)
	}
	if _, err := Build(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	var r imageResult
	if r.cf, err = img.ConfigFile(); err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		r.files = append(r.files, strings.TrimPrefix(h.Name, "/"))
	}
	return r
}

// opens counts, through inotify, how often each file directly in dir is
// opened while fn runs. Closes are watched too: inotify merges an event
// with an identical one queued right before it, so two opens in a row
// would count once.
func opens(t *testing.T, dir string, fn func()) map[string]int {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_OPEN|unix.IN_CLOSE_NOWRITE|unix.IN_CLOSE_WRITE); err != nil {
		t.Fatalf("inotify watch %s: %v", dir, err)
	}
	fn()
	got := map[string]int{}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatalf("read inotify events: %v", err)
		}
		if n <= 0 {
			break
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+nameLen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if mask&unix.IN_Q_OVERFLOW != 0 {
				t.Fatal("inotify queue overflowed")
			}
			if mask&unix.IN_OPEN != 0 && len(name) > 0 {
				got[string(name)]++
			}
			off += unix.SizeofInotifyEvent + nameLen
		}
	}
	return got
}

// TestMissedStepGatheredOnce: the plan hashes the context files of the
// COPY it stops at, and the build then runs that very COPY; hashing them
// again is a second read of every source file, which on a large context is
// the cost of the whole plan once more. Each file is read once to hash it
// and once to copy it, whether its COPY is the step planning stopped at or
// one after it. A stopped relative WORKDIR is resolved once, not again when
// its stage resumes.
func TestMissedStepGatheredOnce(t *testing.T) {
	ctxDir := t.TempDir()
	for _, name := range []string{"a.txt", "b.txt"} {
		if err := os.WriteFile(filepath.Join(ctxDir, name), []byte(name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	df := `FROM scratch AS w
WORKDIR app
WORKDIR sub
FROM scratch
COPY a.txt /
COPY --from=w /app /w
COPY b.txt /
`
	out := filepath.Join(t.TempDir(), "oci")
	var img imageResult
	got := opens(t, ctxDir, func() {
		img = buildLayout(t, ctxDir, df, out, func(o *Options) { o.CacheDir = t.TempDir() })
	})
	if got["a.txt"] != 2 || got["b.txt"] != 2 {
		t.Errorf("context files opened %v times, want each twice (hashed once, copied once)", got)
	}
	var hist []string
	for _, h := range img.cf.History {
		hist = append(hist, h.CreatedBy)
	}
	want := []string{"COPY a.txt / # buildkit", "COPY /app /w # buildkit", "COPY b.txt / # buildkit"}
	if !slices.Equal(hist, want) {
		t.Errorf("history %q, want %q", hist, want)
	}
	for _, f := range []string{"a.txt", "b.txt", "w/sub"} {
		if !slices.Contains(img.files, f) {
			t.Errorf("image lacks /%s; it has %q", f, img.files)
		}
	}
}

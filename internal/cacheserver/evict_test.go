package cacheserver_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kiln-build/kiln/internal/cacheserver"
)

// storeBytes is what the blobs take on disk, counted apart from the server.
// The server may evict while it walks: a blob gone between listing its
// directory and reading it is no longer in the store, not an error.
func storeBytes(t *testing.T, root string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(filepath.Join(root, "docker/registry/v2/blobs"), func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if d.Name() == "data" {
			fi, err := d.Info()
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Under --max-size the store goes back under the cap while serving; the
// least recently used images go first, an image read meanwhile stays, and
// every image that remains pulls completely.
func TestMaxSize(t *testing.T) {
	root := t.TempDir()
	const maxSize = 2 << 20
	// The grace must outlast a push from its first blob to its manifest,
	// or the sweep removes the blobs, as designed, and the push fails:
	// 1 s did not on a loaded 2-core machine under -race.
	const grace = 5 * time.Second
	addr := start(t, cacheserver.Config{Root: root, MaxSize: maxSize, EvictGrace: grace, EvictInterval: 50 * time.Millisecond})

	const n = 8
	refs := make([]name.Reference, n)
	imgs := make([]v1.Image, n)
	for i := range n {
		img, err := random.Image(300_000, 2) // about 600 kB each
		if err != nil {
			t.Fatal(err)
		}
		imgs[i] = img
		refs[i], _ = name.ParseReference(addr + "/evict/app:" + string(rune('a'+i)))
		if err := remote.Write(refs[i], img); err != nil {
			t.Fatalf("push %d under the cap: %v", i, err)
		}
		// Image 0 is read before every push: the most recently used.
		pullWhole(t, refs[0], fmt.Sprintf("image 0 after push %d", i))
	}
	// The sweeps evict while image 0 is still being read: it stays, and
	// pulls whole throughout.
	deadline := time.Now().Add(grace + 30*time.Second)
	for storeBytes(t, root) > maxSize {
		if time.Now().After(deadline) {
			t.Fatalf("store still %d bytes %s after the last push, cap %d", storeBytes(t, root), grace+30*time.Second, maxSize)
		}
		pullWhole(t, refs[0], "image 0 during eviction")
		time.Sleep(100 * time.Millisecond)
	}
	kept := 0
	for i, ref := range refs {
		img, err := remote.Image(ref)
		if err != nil {
			continue // evicted
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("image %d remains but does not pull whole: %v", i, err)
		}
		kept++
	}
	if _, err := remote.Head(refs[0]); err != nil {
		t.Errorf("the most recently read image was evicted: %v", err)
	}
	if _, err := remote.Head(refs[1]); err == nil {
		t.Errorf("the least recently used image survived a store over its cap")
	}
	if kept < 2 || kept == n {
		t.Errorf("%d of %d images kept under a %d-byte cap", kept, n, maxSize)
	}
	t.Logf("%d of %d images kept, store %d bytes", kept, n, storeBytes(t, root))
}

func pullWhole(t *testing.T, ref name.Reference, what string) {
	t.Helper()
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("%s does not pull whole: %v", what, err)
	}
}

// Under --max-age an image nobody used for that long goes, while one read
// meanwhile stays: reads count as use.
func TestMaxAge(t *testing.T) {
	root := t.TempDir()
	addr := start(t, cacheserver.Config{Root: root, MaxAge: 3 * time.Second, EvictGrace: 2 * time.Second, EvictInterval: 50 * time.Millisecond})
	old, _ := name.ParseReference(addr + "/age/old:1")
	used, _ := name.ParseReference(addr + "/age/used:1")
	for _, ref := range []name.Reference{old, used} {
		img, _ := random.Image(10_000, 1)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		img, err := remote.Image(used)
		if err != nil {
			t.Fatalf("an image read every 100ms was evicted: %v", err)
		}
		if err := validate.Image(img); err != nil {
			t.Fatalf("an image read every 100ms does not pull whole: %v", err)
		}
		// Looked for on disk: a HEAD would be a use.
		if _, err := os.Stat(filepath.Join(root, "docker/registry/v2/repositories/age/old/_manifests/tags/1")); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an image unused for 20s survived --max-age 3s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A refused request is no use: anonymous HEADs against an htpasswd server
// do not keep an image alive.
func TestMaxAgeIgnoresRefusedReads(t *testing.T) {
	root := t.TempDir()
	addr := start(t, cacheserver.Config{Root: root, Htpasswd: htpasswd(t, map[string]string{"ci": "pw"}),
		MaxAge: 3 * time.Second, EvictGrace: 2 * time.Second, EvictInterval: 50 * time.Millisecond})
	ref, _ := name.ParseReference(addr + "/age/old:1")
	img, _ := random.Image(10_000, 1)
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "ci", Password: "pw"})); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, _ = remote.Head(ref, remote.WithAuth(authn.Anonymous))
		if _, err := os.Stat(filepath.Join(root, "docker/registry/v2/repositories/age/old/_manifests/tags/1")); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("anonymous, refused HEADs kept an image alive past --max-age")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

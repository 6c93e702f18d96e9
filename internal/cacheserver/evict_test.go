package cacheserver_test

import (
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
func storeBytes(t *testing.T, root string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(filepath.Join(root, "docker/registry/v2/blobs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == "data" {
			fi, err := d.Info()
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
	const grace = time.Second
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
		if _, err := remote.Image(refs[0]); err != nil {
			t.Fatalf("image 0 after push %d: %v", i, err)
		}
		if img, err := remote.Image(refs[0]); err == nil {
			if err := validate.Image(img); err != nil {
				t.Fatalf("image 0 after push %d does not pull whole: %v", i, err)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for storeBytes(t, root) > maxSize {
		if time.Now().After(deadline) {
			t.Fatalf("store still %d bytes 30s after the last push, cap %d", storeBytes(t, root), maxSize)
		}
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

package cli_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-build/kiln/internal/mountstore"
	"github.com/kiln-build/kiln/internal/testenv"
)

// deleteBiggestPack deletes, through the registry's API, the largest
// cache-mount pack the cache manifest at ref names (the one holding the
// mount's 3 MB file), as a registry's retention policy or an operator
// would, and returns its digest.
func deleteBiggestPack(t *testing.T, reg, ref string) string {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	man, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := man.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var pack string
	var size int64
	for _, l := range mf.Layers {
		if l.MediaType == mountstore.PackMediaType && l.Size > size {
			pack, size = l.Digest.String(), l.Size
		}
	}
	if pack == "" {
		t.Fatalf("the cache manifest at %s names no pack", ref)
	}
	req, _ := http.NewRequest(http.MethodDelete, "http://"+reg+"/v2/"+r.Context().RepositoryStr()+"/blobs/"+pack, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("deleting blob %s: %s", pack, resp.Status)
	}
	return pack
}

// A pack the store lost (deleted behind kiln's back: a registry's
// retention policy, an operator cleaning a cache directory) while the
// cache index still names it: the runner that has the mount's files saves
// them again instead of referencing the lost pack, warns, and the build
// and the cache flush succeed; a fresh runner then restores the mount
// whole. Through the registry and with type=local.
func TestLostMountPackIsPackedAgain(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	for _, kind := range []string{"registry", "local"} {
		t.Run(kind, func(t *testing.T) {
			cacheDir := filepath.Join(t.TempDir(), "cache")
			cacheRef := reg + "/ms/gone:cache"
			from, to := "type=registry,ref="+cacheRef, "type=registry,ref="+cacheRef+",mode=max"
			if kind == "local" {
				from, to = "type=local,src="+cacheDir, "type=local,dest="+cacheDir+",mode=max"
			}
			src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "one\n"})
			dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
			kiln(t, dir, env, "build", "--progress=plain", "--cache-to", to, ".")
			var lost string
			if kind == "registry" {
				lost = deleteBiggestPack(t, reg, cacheRef)
			} else {
				var size int64
				for name, n := range blobBytes(t, cacheDir) {
					if n > size {
						lost, size = "sha256:"+name, n
					}
				}
				if err := os.Remove(filepath.Join(cacheDir, "blobs", "sha256", strings.TrimPrefix(lost, "sha256:"))); err != nil {
					t.Fatal(err)
				}
			}

			// The same runner, its mount directory intact, changes the mount.
			if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/gone"+kind+":2", "--cache-from", from, "--cache-to", to, ".")
			if !strings.Contains(res.Stderr, lost) || !strings.Contains(res.Stderr, "packed again") {
				t.Errorf("no warning names the lost pack %s:\n%s", lost, res.Stderr)
			}
			saved := outFile(t, reg+"/ms/gone"+kind+":2", "after")

			dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
			if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("three\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			res = kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/gone"+kind+":3", "--cache-from", from, ".")
			if strings.Contains(res.Stderr, "left out") || strings.Contains(res.Stderr, "starting empty") {
				t.Errorf("the restore after the lost pack was saved again warned:\n%s", res.Stderr)
			}
			if got := outFile(t, reg+"/ms/gone"+kind+":3", "before"); got != saved {
				t.Errorf("the restored mount is not the one saved after the pack was lost\n got:\n%s\nwant:\n%s", got, saved)
			}
		})
	}
}

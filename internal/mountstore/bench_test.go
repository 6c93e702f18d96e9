package mountstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/registry"
	"github.com/kiln-build/kiln/internal/testenv"
)

// BenchmarkManySmallFiles is issue 12's many-small-files case through the
// real registry: a mount of KILN_BENCH_FILES files (default 30,000) and
// KILN_BENCH_MB megabytes (default 400), half random and half repeated
// bytes (about as compressible as a build cache). It reports the restore
// on a fresh directory against four parallel `curl | tar -x` of the same
// tree as plain tar blobs from the same registry, and, after 200 files are
// added, the bytes the save uploaded against the bytes added.
//
//	CI=true go test -run '^$' -bench ManySmallFiles -benchtime 1x ./internal/mountstore/
func BenchmarkManySmallFiles(b *testing.B) {
	testenv.Need(b, "curl")
	files, mb := envInt("KILN_BENCH_FILES", 30000), envInt("KILN_BENCH_MB", 400)
	ctx := context.Background()
	reg := testenv.Registry(b)
	src := filepath.Join(b.TempDir(), "m")
	rng := rand.New(rand.NewPCG(1, 2))
	mean := mb << 20 / files
	gen := func(dir string, n int, prefix string) int64 {
		var total int64
		for i := range n {
			size := mean/2 + rng.IntN(mean+1)
			data := make([]byte, size)
			for j := 0; j < size/2; j += 8 {
				v := rng.Uint64()
				for k := 0; k < 8 && j+k < size/2; k++ {
					data[j+k] = byte(v >> (8 * k))
				}
			}
			p := filepath.Join(dir, fmt.Sprintf("d%d", i%4), fmt.Sprintf("%02x", i%251), prefix+strconv.Itoa(i))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				b.Fatal(err)
			}
			total += int64(size)
		}
		return total
	}
	size := gen(src, files, "f")
	b.Logf("mount: %d files, %.1f MiB", files, float64(size)/(1<<20))
	ref := reg + "/bench/mount:cache"
	open := func() *cache.Registry {
		st, err := cache.OpenRegistry(ctx, ref, registry.Options{})
		if err != nil {
			b.Fatal(err)
		}
		return st
	}
	saveTo := func(base *Manifest, state *State) (SaveResult, time.Duration) {
		st := open()
		start := time.Now()
		sink := Sink{W: st, ID: "bench"}
		res, err := Save(ctx, src, sink, SaveOptions{Base: base, State: state})
		if err == nil {
			_, err = sink.Commit(ctx, res.Manifest)
		}
		if err == nil {
			err = st.Flush(ctx)
		}
		if err != nil {
			b.Fatal(err)
		}
		return res, time.Since(start)
	}
	first, took := saveTo(nil, nil)
	b.Logf("first save: %.1f s, %.1f MiB uploaded in %d packs", took.Seconds(), float64(first.Uploaded)/(1<<20), first.NewPacks)
	added := gen(src, 200, "new")
	m, _, err := Load(ctx, open(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	second, took := saveTo(m, first.State)
	b.Logf("after adding 200 files (%.1f MiB): save %.2f s, %.2f MiB uploaded", float64(added)/(1<<20), took.Seconds(), float64(second.Uploaded)/(1<<20))
	b.ReportMetric(float64(second.Uploaded)/float64(added), "saved/added")

	// Baseline: the same tree as four tar blobs, fetched and unpacked at once.
	var urls []string
	for q := range 4 {
		tarFile := filepath.Join(b.TempDir(), "q.tar")
		if out, err := exec.Command("tar", "-C", src, "-cf", tarFile, fmt.Sprintf("d%d", q)).CombinedOutput(); err != nil {
			b.Fatalf("tar: %v\n%s", err, out)
		}
		urls = append(urls, pushBlob(b, reg, "bench/tar", tarFile))
	}

	start := time.Now()
	dst := filepath.Join(b.TempDir(), "r")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		b.Fatal(err)
	}
	m, _, err = Load(ctx, open(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	r, err := Restore(ctx, dst, m, Source{Store: open()}, RestoreOptions{})
	if err != nil || r.Missing != 0 {
		b.Fatalf("restore: %v %+v", err, r)
	}
	restore := time.Since(start)

	start = time.Now()
	tarDst := filepath.Join(b.TempDir(), "t")
	if err := os.MkdirAll(tarDst, 0o755); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, u := range urls {
		wg.Go(func() {
			if out, err := exec.Command("sh", "-c", "curl -sf "+u+" | tar -x -C "+tarDst).CombinedOutput(); err != nil {
				b.Errorf("curl | tar: %v\n%s", err, out)
			}
		})
	}
	wg.Wait()
	baseline := time.Since(start)
	b.Logf("restore %.2f s (%.1f MiB of packs), 4 x curl | tar -x %.2f s", restore.Seconds(), float64(r.Fetched)/(1<<20), baseline.Seconds())
	b.ReportMetric(restore.Seconds()/baseline.Seconds(), "restore/curl-tar")
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// pushBlob uploads a file as a blob (monolithic POST then PUT) and
// returns its URL.
func pushBlob(b *testing.B, reg, repo, file string) string {
	f, err := os.Open(file)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		b.Fatal(err)
	}
	d := "sha256:" + hex.EncodeToString(h.Sum(nil))
	resp, err := http.Post("http://"+reg+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if _, err := f.Seek(0, 0); err != nil {
		b.Fatal(err)
	}
	sep := "?"
	for _, c := range loc {
		if c == '?' {
			sep = "&"
		}
	}
	if loc[0] == '/' {
		loc = "http://" + reg + loc
	}
	req, _ := http.NewRequest(http.MethodPut, loc+sep+"digest="+d, f)
	fi, _ := f.Stat()
	req.ContentLength = fi.Size()
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b.Fatalf("blob upload: %s", resp.Status)
	}
	return "http://" + reg + "/v2/" + repo + "/blobs/" + d
}

// Command mountbench times issue 12's many-small-files cache mount through a
// real registry: a tree of -files files and -mb megabytes (half of each
// file random bytes, half zeros: about as compressible as a build cache),
// saved once, then grown by -add files and saved again.
//
// It prints, medians of -reps interleaved runs, each into a fresh directory:
//
//   - restore: kiln's (mountstore.Load + Restore, from an empty directory)
//     against its floor, -parallel `curl | tar -x` at once of the same
//     tree as that many plain tar blobs in the same registry;
//   - the whole-archive restore kiln did before the content-addressed
//     store: one zstd tar of the tree fetched through the cache store and
//     applied with snapshot.Apply;
//
// and, once, the bytes the grown tree's save pushed to the registry
// (counted at -proxy, bench/cmd/countproxy: packs, the mount manifest, the
// cache index and its OCI manifest) against the bytes added, beside the
// whole archive's bytes, which the old code pushed on every save.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/mountstore"
	"github.com/kiln-build/kiln/internal/registry"
	"github.com/kiln-build/kiln/internal/snapshot"
)

var parallel *int

// parts is how many top-level directories the tree has, so the floor's
// tar blobs are the tree cut into equal parts.
const parts = 4

func main() {
	reg := flag.String("registry", "", "the registry, host:port on 127.0.0.1 (restores read it directly)")
	proxy := flag.String("proxy", "", "countproxy in front of -registry (saves go through it)")
	work := flag.String("work", "", "scratch directory (emptied first)")
	files := flag.Int("files", 30000, "files in the mount")
	mb := flag.Int("mb", 400, "megabytes in the mount")
	add := flag.Int("add", 200, "files the second build adds")
	reps := flag.Int("reps", 3, "runs per side")
	only := flag.String("only", "", "restore one side only: kiln, tar or whole")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of kiln's restores here")
	parallel = flag.Int("parallel", parts, "kiln's restore parallelism")
	restoreTo := flag.String("restore-to", "", "only restore the registry's mount into this empty directory (to profile or strace it)")
	flag.Parse()
	ctx := context.Background()
	if *reg != "" && *restoreTo != "" {
		start := time.Now()
		if err := (&bench{reg: *reg}).restore(ctx, *restoreTo); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("restored in %.2f s\n", time.Since(start).Seconds())
		return
	}
	if *reg == "" || *proxy == "" || *work == "" {
		log.Fatal("usage: mountbench -registry HOST:PORT -proxy HOST:PORT -work DIR")
	}
	if err := os.RemoveAll(*work); err != nil {
		log.Fatal(err)
	}
	b := &bench{reg: *reg, proxy: *proxy, work: *work, rng: rand.New(rand.NewPCG(1, 2)), mean: *mb << 20 / *files}
	src := filepath.Join(*work, "src")
	total := b.gen(src, *files, "f")
	fmt.Printf("mount: %d files, %.1f MiB\n", *files, mib(total))

	// The first build's save, then the second's after it added files.
	first, took := b.save(ctx, src, nil, nil)
	fmt.Printf("first save: %.1f s, %.1f MiB of packs\n", took.Seconds(), mib(first.Uploaded))
	added := b.gen(src, *add, "new")
	base, _, err := mountstore.Load(ctx, b.store(ctx, b.proxy), "bench")
	if err != nil {
		log.Fatal(err)
	}
	b.reset()
	second, took := b.save(ctx, src, base, first.State)
	pushed := b.pushed()
	fmt.Printf("save after adding %d files (%.2f MiB): %.2f s, pushed %.2f MiB (%.2f MiB of packs in %d), %.2fx the bytes added\n",
		*add, mib(added), took.Seconds(), mib(pushed), mib(second.Uploaded), second.NewPacks, float64(pushed)/float64(added))
	if comp, _, err := second.Manifest.Encode(); err == nil {
		fmt.Printf("  of which the mount manifest: %.2f MiB (%d entries)\n", mib(int64(len(comp))), len(second.Manifest.Entries))
	}

	// The whole archive, as kiln saved every mount before: written, then
	// pushed as a cache record.
	b.reset()
	start := time.Now()
	whole := b.saveWhole(ctx, src)
	wholeSave := time.Since(start)
	wholePushed := b.pushed()
	fmt.Printf("whole-archive save: %.2f s, pushed %.1f MiB (%.1fx the bytes added)\n", wholeSave.Seconds(), mib(wholePushed), float64(wholePushed)/float64(added))

	urls := b.tarBlobs(ctx, src)
	// Every blob a restore reads, to put back in the registry's page cache
	// after each run's cache drop.
	warm := append([]string(nil), urls...)
	for _, p := range second.Manifest.Packs {
		warm = append(warm, "http://"+b.reg+"/v2/bench/mount/blobs/"+p.Digest.String())
	}
	warm = append(warm, "http://"+b.reg+"/v2/bench/mount/blobs/"+whole.Layer.Digest.String())
	var kiln, tar, wholeR, kilnCPU, tarCPU, wholeCPU []float64
	var prof *os.File
	if *cpuprofile != "" {
		if prof, err = os.Create(*cpuprofile); err != nil {
			log.Fatal(err)
		}
	}
	for i := range *reps {
		sides := []struct {
			name string
			run  func(dir string) error
			out  *[]float64
			cpu  *[]float64
		}{
			{"kiln", func(dir string) error {
				if prof != nil {
					if err := pprof.StartCPUProfile(prof); err == nil {
						defer pprof.StopCPUProfile()
					}
				}
				return b.restore(ctx, dir)
			}, &kiln, &kilnCPU},
			{"tar", func(dir string) error { return curlTar(ctx, urls, dir) }, &tar, &tarCPU},
			{"whole", func(dir string) error { return b.restoreWhole(ctx, whole, dir) }, &wholeR, &wholeCPU},
		}
		// Rotate, so no side always runs first (or after the same one).
		sides = append(sides[i%3:], sides[:i%3]...)
		for _, s := range sides {
			if *only != "" && s.name != *only {
				continue
			}
			// A new directory per run, all removed at the end: removing
			// the last run's tree here would bill its deletion to this run.
			dir := filepath.Join(*work, fmt.Sprintf("run-%d-%s", i, s.name))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				log.Fatal(err)
			}
			settle(warm)
			cpu0 := cpuTime()
			start := time.Now()
			if err := s.run(dir); err != nil {
				log.Fatalf("%s: %v", s.name, err)
			}
			d := time.Since(start).Seconds()
			cpu := cpuTime() - cpu0
			*s.out = append(*s.out, d)
			*s.cpu = append(*s.cpu, cpu)
			fmt.Printf("run %d %-5s %.2f s (CPU %.2f s; load %s)\n", i+1, s.name, d, cpu, loadavg())
			if prof != nil && s.name == "kiln" {
				prof.Close()
				prof = nil
			}
		}
	}
	_ = os.RemoveAll(*work)
	if *only != "" {
		return
	}
	mk, mt, mw := median(kiln), median(tar), median(wholeR)
	fmt.Printf("restore medians: kiln %.2f s, %d x curl|tar %.2f s (ratio %.2f), whole archive %.2f s (%.2fx the floor)\n",
		mk, parts, mt, mk/mt, mw, mw/mt)
	fmt.Printf("restore CPU medians (user+system; the registry's not counted): kiln %.2f s, curl|tar %.2f s (ratio %.2f), whole archive %.2f s\n",
		median(kilnCPU), median(tarCPU), median(kilnCPU)/median(tarCPU), median(wholeCPU))
	fmt.Printf("save: kiln pushed %.2f MiB for %.2f MiB added (%.2fx), whole archive %.1f MiB (%.1fx)\n",
		mib(pushed), mib(added), float64(pushed)/float64(added), mib(wholePushed), float64(wholePushed)/float64(added))
}

type bench struct {
	reg, proxy, work string
	rng              *rand.Rand
	mean             int
}

// gen writes n files under dir's parts top-level directories (and 251
// subdirectories each), sizes uniform around the mean.
func (b *bench) gen(dir string, n int, prefix string) int64 {
	var total int64
	for i := range n {
		size := b.mean/2 + b.rng.IntN(b.mean+1)
		data := make([]byte, size)
		for j := 0; j < size/2; j += 8 {
			v := b.rng.Uint64()
			for k := 0; k < 8 && j+k < size/2; k++ {
				data[j+k] = byte(v >> (8 * k))
			}
		}
		p := filepath.Join(dir, fmt.Sprintf("d%d", i%parts), fmt.Sprintf("%02x", i%251), prefix+strconv.Itoa(i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			log.Fatal(err)
		}
		total += int64(size)
	}
	return total
}

func (b *bench) store(ctx context.Context, host string) *cache.Registry {
	st, err := cache.OpenRegistry(ctx, host+"/bench/mount:cache", registry.Options{})
	if err != nil {
		log.Fatal(err)
	}
	return st
}

// save is what a build's cache export does for the mount.
func (b *bench) save(ctx context.Context, src string, base *mountstore.Manifest, state *mountstore.State) (mountstore.SaveResult, time.Duration) {
	start := time.Now()
	st := b.store(ctx, b.proxy)
	sink := mountstore.Sink{W: st, ID: "bench"}
	res, err := mountstore.Save(ctx, src, sink, mountstore.SaveOptions{Base: base, State: state})
	if err == nil {
		_, err = sink.Commit(ctx, res.Manifest)
	}
	if err == nil {
		err = st.Flush(ctx)
	}
	if err != nil {
		log.Fatal(err)
	}
	return res, time.Since(start)
}

// restore is what a fresh runner's first miss that mounts it does.
func (b *bench) restore(ctx context.Context, dir string) error {
	st := b.store(ctx, b.reg)
	m, _, err := mountstore.Load(ctx, st, "bench")
	if err != nil {
		return err
	}
	r, err := mountstore.Restore(ctx, dir, m, mountstore.Source{Store: st}, mountstore.RestoreOptions{Parallel: *parallel})
	if err != nil {
		return err
	}
	if r.Missing != 0 || len(r.Problems) != 0 {
		return fmt.Errorf("restore left out %d files: %v", r.Missing, r.Problems)
	}
	return nil
}

var wholeKey = digest.FromString("mountbench whole archive")

// saveWhole is kiln's cache-mount save before mountstore: the tree as one
// zstd layer, put as a cache record.
func (b *bench) saveWhole(ctx context.Context, src string) cache.Record {
	var paths []string
	err := filepath.WalkDir(src, func(p string, _ os.DirEntry, err error) error {
		if err != nil || p == src {
			return err
		}
		rel, err := filepath.Rel(src, p)
		paths = append(paths, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	l, err := image.WriteLayer(ctx, src, image.Changes{Paths: paths}, image.LayerOptions{Compression: image.Zstd, OCI: true, Dir: b.work})
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(l.Path())
	st := b.store(ctx, b.proxy)
	rec := cache.Record{Key: wholeKey, StepID: "mountbench-whole"}
	if err := st.Put(ctx, rec, l); err != nil {
		log.Fatal(err)
	}
	if err := st.Flush(ctx); err != nil {
		log.Fatal(err)
	}
	got, err := b.store(ctx, b.reg).Get(ctx, wholeKey)
	if err != nil {
		log.Fatal(err)
	}
	return got
}

// restoreWhole is kiln's cache-mount restore before mountstore.
func (b *bench) restoreWhole(ctx context.Context, rec cache.Record, dir string) error {
	l, err := b.store(ctx, b.reg).Layer(ctx, rec)
	if err != nil {
		return err
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	return snapshot.Apply(ctx, dir, rc)
}

// settle puts the machine in the same state before every run, that of a
// fresh runner: nothing dirty, no page cache but the registry's blobs. On
// this kind of VM, creating files costs up to twice the CPU once a few
// earlier runs' trees fill the page cache (the kernel reclaims as it
// writes), so without the drop whichever side ran later lost. The blobs
// are read back through the registry so that neither side pays for its
// disk; a drop needs root, and without it runs only sync.
func settle(warm []string) {
	_ = exec.Command("sync").Run()
	if os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0) != nil {
		return
	}
	// The programs each side runs, read back too: kiln's is this one.
	if self, err := os.Executable(); err == nil {
		if b, err := os.ReadFile(self); err == nil {
			_ = b[len(b)-1]
		}
	}
	_ = exec.Command("sh", "-c", "curl --version && tar --version && sha256sum --version").Run()
	for _, u := range warm {
		resp, err := http.Get(u)
		if err != nil {
			log.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			log.Fatalf("warming %s: %s %v", u, resp.Status, err)
		}
	}
}

// tarBlobs pushes the tree's parts as plain tar blobs, one per top-level
// directory, and returns their URLs on the registry itself.
func (b *bench) tarBlobs(ctx context.Context, src string) []string {
	var urls []string
	for q := range parts {
		f := filepath.Join(b.work, fmt.Sprintf("part%d.tar", q))
		if out, err := exec.CommandContext(ctx, "tar", "-C", src, "-cf", f, fmt.Sprintf("d%d", q)).CombinedOutput(); err != nil {
			log.Fatalf("tar: %v\n%s", err, out)
		}
		urls = append(urls, pushBlob(b.reg, "bench/tar", f))
		os.Remove(f)
	}
	return urls
}

// curlTar is the floor: every part fetched by curl into tar, all at once.
func curlTar(ctx context.Context, urls []string, dir string) error {
	var g errgroup.Group
	for _, u := range urls {
		g.Go(func() error {
			cmd := exec.CommandContext(ctx, "sh", "-c", `curl -fsS "$1" | tar -x -C "$2"`, "sh", u, dir)
			cmd.Stderr = os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("curl|tar %s: %w", u, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// pushBlob uploads a file as one blob (POST, then a monolithic PUT) and
// returns its URL.
func pushBlob(reg, repo, file string) string {
	f, err := os.Open(file)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		log.Fatal(err)
	}
	d := "sha256:" + hex.EncodeToString(h.Sum(nil))
	resp, err := http.Post("http://"+reg+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = "http://" + reg + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	if _, err := f.Seek(0, 0); err != nil {
		log.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPut, loc+sep+"digest="+d, f)
	if err != nil {
		log.Fatal(err)
	}
	req.ContentLength = n
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		log.Fatalf("blob upload: %s", resp.Status)
	}
	return "http://" + reg + "/v2/" + repo + "/blobs/" + d
}

func (b *bench) reset() {
	resp, err := http.Post("http://"+b.proxy+"/_bench/reset", "", nil)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
}

func (b *bench) pushed() int64 {
	resp, err := http.Get("http://" + b.proxy + "/_bench/stats")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct{ Pushed int64 }
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		log.Fatal(err)
	}
	return s.Pushed
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// cpuTime is the CPU this process and its waited-for children used so
// far: kiln's sides run in the process, curl and tar as children.
func cpuTime() float64 {
	var self, kids unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &self)
	_ = unix.Getrusage(unix.RUSAGE_CHILDREN, &kids)
	sec := func(t unix.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return sec(self.Utime) + sec(self.Stime) + sec(kids.Utime) + sec(kids.Stime)
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

package cli_test

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// BenchmarkCacheMountCompression measures what the cache compression costs
// a RUN --mount=type=cache of about 40 MB of small files (taken from the
// machine's own Go build cache, GOCACHE): the cache export on the runner
// that filled it, the bytes of the mount's blob, and on a fresh runner the
// RUN that restores it (download and extraction; the command itself does
// nothing then). gzip and zstd runs alternate; medians are reported.
//
//	CI=true go test -run '^$' -bench CacheMountCompression -benchtime 1x ./internal/cli/
//
// KILN_BENCH_REPS sets the runs per compression (default 5).
func BenchmarkCacheMountCompression(b *testing.B) {
	testenv.Need(b, "runc")
	reps := 5
	if n, err := strconv.Atoi(os.Getenv("KILN_BENCH_REPS")); err == nil && n > 0 {
		reps = n
	}
	reg := testenv.Registry(b)
	base, _ := testenv.BusyboxImage(b, reg, "busybox")
	src := b.TempDir()
	files, size := copyGoCache(b, filepath.Join(src, "gen"), 40<<20)
	df := "FROM " + base + "\nARG N\n" +
		"RUN --mount=type=bind,source=gen,target=/gen --mount=type=cache,id=gobuild,target=/cache " +
		"if [ -e /cache/.filled ]; then ls /cache >/dev/null; else cp -a /gen/. /cache/ && touch /cache/.filled; fi; echo $N > /n\n"
	if err := os.WriteFile(filepath.Join(src, "Dockerfile"), []byte(df), 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("cache mount: %d files, %.1f MiB", files, float64(size)/(1<<20))

	type sample struct{ export, restore, blob, cpuA, cpuB float64 }
	results := map[string][]sample{}
	for i := 0; i < reps; i++ {
		for _, comp := range []string{"gzip", "zstd"} {
			ref := reg + "/bench/" + comp + ":" + strconv.Itoa(i)
			dir := copyDir(b, src, time.Unix(1700000000, 0))
			out, cpuA := kilnCPU(b, b.TempDir(), dir, "build", "--progress=plain", "--build-arg", "N=1",
				"--cache-to", "type=registry,ref="+ref+",mode=max,compression="+comp, ".")
			export := namedStepSeconds(b, out, "exporting cache to")
			var blob int64
			for id, l := range cacheBlobs(b, ref) {
				if strings.HasPrefix(id, "cache-mount|") {
					blob = l.Size
				}
			}
			dir = copyDir(b, src, time.Unix(1700000000, 0))
			out, cpuB := kilnCPU(b, b.TempDir(), dir, "build", "--progress=plain", "--build-arg", "N=2",
				"--cache-from", "type=registry,ref="+ref, ".")
			if !strings.Contains(out, "restored cache mount gobuild") {
				b.Fatalf("%s: the fresh runner restored no cache mount:\n%s", comp, out)
			}
			restore := namedStepSeconds(b, out, "RUN ")
			results[comp] = append(results[comp], sample{export, restore, float64(blob), cpuA.Seconds(), cpuB.Seconds()})
		}
	}
	for _, comp := range []string{"gzip", "zstd"} {
		var ex, re, bl, ca, cb []float64
		for _, s := range results[comp] {
			ex, re, bl = append(ex, s.export), append(re, s.restore), append(bl, s.blob)
			ca, cb = append(ca, s.cpuA), append(cb, s.cpuB)
		}
		b.Logf("%s: cache export %.2f s [%.1f-%.1f], mount blob %.1f MiB, kiln CPU %.2f s; fresh runner: restoring RUN %.2f s [%.1f-%.1f], kiln CPU %.2f s (medians [min-max] of %d)",
			comp, median(ex), slices.Min(ex), slices.Max(ex), median(bl)/(1<<20), median(ca), median(re), slices.Min(re), slices.Max(re), median(cb), len(ex))
		b.ReportMetric(median(ex), comp+"-export-s")
		b.ReportMetric(median(bl)/(1<<20), comp+"-blob-MiB")
		b.ReportMetric(median(re), comp+"-restore-s")
	}
}

// copyGoCache copies files of the machine's Go build cache into dir until
// max bytes, and reports how many files and bytes it copied. Files over
// 128 KiB are left out, so the mount is many small files, as a go build
// cache of many small packages is.
func copyGoCache(b *testing.B, dir string, max int64) (n int, total int64) {
	gocache := os.Getenv("GOCACHE")
	if gocache == "" {
		home, _ := os.UserCacheDir()
		gocache = filepath.Join(home, "go-build")
	}
	var paths []string
	_ = filepath.WalkDir(gocache, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil && info.Size() <= 128<<10 {
				paths = append(paths, p)
			}
		}
		return nil
	})
	sort.Strings(paths)
	for _, p := range paths {
		if total >= max {
			break
		}
		rel, _ := filepath.Rel(gocache, p)
		in, err := os.Open(p)
		if err != nil {
			continue
		}
		dst := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			b.Fatal(err)
		}
		out, err := os.Create(dst)
		if err != nil {
			b.Fatal(err)
		}
		w, err := io.Copy(out, in)
		in.Close()
		if cerr := out.Close(); err != nil || cerr != nil {
			b.Fatal(err, cerr)
		}
		n, total = n+1, total+w
	}
	if total < max/2 {
		b.Fatalf("the Go build cache %s has only %d bytes; build something first", gocache, total)
	}
	return n, total
}

// namedStepSeconds is the duration plain progress gives the first step whose
// name contains what.
func namedStepSeconds(b *testing.B, progress, what string) float64 {
	b.Helper()
	id := ""
	for _, line := range strings.Split(progress, "\n") {
		if id == "" && strings.Contains(line, what) && strings.HasPrefix(line, "#") {
			id, _, _ = strings.Cut(line, " ")
			continue
		}
		if id != "" && strings.HasPrefix(line, id+" DONE ") {
			s, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(line, id+" DONE "), "s"), 64)
			if err != nil {
				b.Fatalf("%q: %v", line, err)
			}
			return s
		}
	}
	b.Fatalf("no finished step %q in:\n%s", what, progress)
	return 0
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

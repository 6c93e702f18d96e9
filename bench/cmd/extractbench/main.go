// Command extractbench times kiln's own layer path (registry manifest,
// streamed blobs, decompression, digest checks, extraction into the
// overlay snapshotter's layer store, from an empty state) next to what the
// hardware gives for the same blobs: one `curl | tar -xzf` per layer, all
// layers at once. It prints each run and the ratio of the medians.
//
// Both sides read the same blobs from the same loopback registry, into
// fresh directories on the same filesystem; runs are interleaved so
// neither side always goes first.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-build/kiln/internal/registry"
	"github.com/kiln-build/kiln/internal/snapshot"
)

func main() {
	ref := flag.String("ref", "", "image to materialize (a 127.0.0.1 registry)")
	reps := flag.Int("reps", 3, "runs per side")
	work := flag.String("work", "", "scratch directory (emptied per run)")
	only := flag.String("only", "", "run one side only: kiln or tar")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run here")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if *ref == "" || *work == "" {
		log.Fatal("usage: extractbench -ref REG/REPO:TAG -work DIR [-reps N]")
	}
	ctx := context.Background()
	if err := os.RemoveAll(*work); err != nil {
		log.Fatal(err)
	}
	var kiln, tar []float64
	for i := 0; i < *reps; i++ {
		sides := []struct {
			name string
			run  func(context.Context, string, string) error
			out  *[]float64
		}{{"kiln", runKiln, &kiln}, {"curl|tar", runCurlTar, &tar}}
		if i%2 == 1 {
			sides[0], sides[1] = sides[1], sides[0]
		}
		for _, s := range sides {
			if *only != "" && !strings.Contains(s.name, *only) {
				continue
			}
			// A new directory per run, all removed at the end: deleting
			// the previous run's tree here would bill its discards and
			// journal work (ext4 mounted with discard) to the next run.
			dir := filepath.Join(*work, fmt.Sprintf("run-%d-%s", i, s.name[:4]))
			if err := os.MkdirAll(dir, 0o700); err != nil {
				log.Fatal(err)
			}
			syncDisk()
			start := time.Now()
			if err := s.run(ctx, *ref, dir); err != nil {
				log.Fatalf("%s: %v", s.name, err)
			}
			d := time.Since(start).Seconds()
			*s.out = append(*s.out, d)
			fmt.Printf("run %d %-8s %.2f s\n", i+1, s.name, d)
		}
	}
	_ = os.RemoveAll(*work)
	mk, mt := median(kiln), median(tar)
	if *only != "" {
		return
	}
	fmt.Printf("median kiln %.2f s, curl|tar %.2f s, ratio %.2f\n", mk, mt, mk/mt)
}

// syncDisk flushes the previous run's dirty pages so that writeback of one
// side's files is not billed to the other.
func syncDisk() { _ = exec.Command("sync").Run() }

func layersOf(ctx context.Context, ref string) ([]v1.Layer, error) {
	img, err := registry.Image(ctx, ref, v1.Platform{}, registry.Options{})
	if err != nil {
		return nil, err
	}
	return img.Layers()
}

// runKiln is what a build's first step needs from a fresh runner: the
// image's layers extracted into the snapshotter's store.
func runKiln(ctx context.Context, ref, dir string) error {
	layers, err := layersOf(ctx, ref)
	if err != nil {
		return err
	}
	s, err := snapshot.New(snapshot.NameOverlay, filepath.Join(dir, "snap"))
	if err != nil {
		return err
	}
	a, err := s.Prepare(ctx, layers)
	if err != nil {
		return err
	}
	return a.Release()
}

// runCurlTar fetches each blob with curl into tar, every layer at once.
func runCurlTar(ctx context.Context, ref, dir string) error {
	layers, err := layersOf(ctx, ref)
	if err != nil {
		return err
	}
	host, path, _ := strings.Cut(ref, "/")
	repo := path
	if i := strings.LastIndex(path, ":"); i >= 0 {
		repo = path[:i]
	}
	g, _ := errgroup.WithContext(ctx)
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		out := filepath.Join(dir, fmt.Sprint(i))
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		url := fmt.Sprintf("http://%s/v2/%s/blobs/%s", host, repo, d)
		g.Go(func() error {
			cmd := exec.CommandContext(ctx, "sh", "-c", `curl -fsSL "$1" | tar -xzf - -C "$2"`, "sh", url, out)
			cmd.Stderr = os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("curl|tar %s: %w", url, err)
			}
			return nil
		})
	}
	return g.Wait()
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

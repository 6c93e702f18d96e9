// Command mkcontext writes the big-context scenario's build context: many
// small files spread over directories, as a monorepo checkout has, and a few
// large incompressible ones, as checked-in assets are. Content comes from a
// seeded generator, so every run of the bench builds the same bytes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
)

type options struct {
	dir        string
	small      int
	perDir     int
	large      int
	largeBytes int64
	seed       uint64
}

func writeFile(path string, size int64, rng *rand.Rand, text bool) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789 \n"
	buf := make([]byte, 8)
	for written := int64(0); written < size; written += 8 {
		v := rng.Uint64()
		for i := range buf {
			if text {
				buf[i] = letters[byte(v>>(8*i))%byte(len(letters))]
			} else {
				buf[i] = byte(v >> (8 * i))
			}
		}
		n := min(int64(len(buf)), size-written)
		if _, err := w.Write(buf[:n]); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("flush %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

func generate(o options) error {
	rng := rand.New(rand.NewPCG(o.seed, o.seed^0x9e3779b97f4a7c15))
	for i := 0; i < o.small; i++ {
		dir := filepath.Join(o.dir, "src", fmt.Sprintf("pkg%03d", i/o.perDir))
		if i%o.perDir == 0 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("mkdir: %w", err)
			}
		}
		// 100 B to 4 KiB, the spread of source files in a real tree.
		size := 100 + rng.Int64N(4000)
		if err := writeFile(filepath.Join(dir, fmt.Sprintf("file%05d.txt", i)), size, rng, true); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(o.dir, "assets"), 0o755); err != nil {
		return fmt.Errorf("mkdir: %w", err)
	}
	for i := 0; i < o.large; i++ {
		if err := writeFile(filepath.Join(o.dir, "assets", fmt.Sprintf("blob%d.bin", i)), o.largeBytes, rng, false); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "", "directory to write into")
	flag.IntVar(&o.small, "small", 20000, "number of small files")
	flag.IntVar(&o.perDir, "per-dir", 200, "small files per directory")
	flag.IntVar(&o.large, "large", 3, "number of large files")
	flag.Int64Var(&o.largeBytes, "large-bytes", 20<<20, "size of each large file")
	flag.Uint64Var(&o.seed, "seed", 1, "generator seed")
	flag.Parse()
	if o.dir == "" || o.perDir <= 0 {
		log.Fatal("mkcontext: -dir is required and -per-dir must be positive")
	}
	if err := generate(o); err != nil {
		log.Fatalf("mkcontext: %v", err)
	}
}

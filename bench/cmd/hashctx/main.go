// Command hashctx measures the floor under a no-change build: the time to
// read and hash every file of a build context, plus one manifest round trip
// to the registry. No builder can tell "nothing changed" faster than it can
// read the context and ask the registry whether the cached result is there,
// so this is the number the no-change cases are compared against.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"
)

type result struct {
	Files        int     `json:"files"`
	Bytes        int64   `json:"bytes"`
	HashSeconds  float64 `json:"hash_seconds"`
	HeadSeconds  float64 `json:"head_seconds"`
	TotalSeconds float64 `json:"total_seconds"`
	HeadStatus   int     `json:"head_status"`
}

// hashTree reads every regular file under root with one worker per CPU.
func hashTree(ctx context.Context, root string) (files int, size int64, err error) {
	var paths []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("walk %s: %w", root, err)
	}
	sizes := make([]int64, len(paths))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.NumCPU())
	for i, p := range paths {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return fmt.Errorf("open: %w", err)
			}
			defer f.Close()
			h := sha256.New()
			n, err := io.Copy(h, f)
			if err != nil {
				return fmt.Errorf("hash %s: %w", p, err)
			}
			sizes[i] = n
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, 0, err
	}
	for _, n := range sizes {
		size += n
	}
	return len(paths), size, nil
}

// headManifest does the one registry round trip a cache check needs.
func headManifest(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return 0, fmt.Errorf("new request: %w", err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("HEAD %s: %w", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func main() {
	dir := flag.String("dir", "", "build context to hash")
	url := flag.String("manifest-url", "", "manifest URL to HEAD, e.g. http://127.0.0.1:5000/v2/app/manifests/latest")
	flag.Parse()
	if *dir == "" || *url == "" {
		log.Fatal("hashctx: -dir and -manifest-url are required")
	}
	ctx := context.Background()
	start := time.Now()
	files, size, err := hashTree(ctx, *dir)
	if err != nil {
		log.Fatalf("hashctx: %v", err)
	}
	hashed := time.Now()
	status, err := headManifest(ctx, *url)
	if err != nil {
		log.Fatalf("hashctx: %v", err)
	}
	end := time.Now()
	r := result{
		Files: files, Bytes: size, HeadStatus: status,
		HashSeconds:  hashed.Sub(start).Seconds(),
		HeadSeconds:  end.Sub(hashed).Seconds(),
		TotalSeconds: end.Sub(start).Seconds(),
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		log.Fatalf("hashctx: %v", err)
	}
}

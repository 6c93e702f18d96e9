package cacheserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/felixge/httpsnoop"
	"github.com/opencontainers/go-digest"
)

// evictor keeps the store under a size and an age bound while it serves.
// An image is its top-level manifest with everything it reaches (child
// manifests of an index, configs, layers); the least recently used images
// go first. It removes manifests before the blobs only they reached, so no
// remaining manifest ever names a missing blob, and it never removes:
//   - a manifest or blob read or written within the grace period, so a
//     client between its manifest and its blobs (pull) or its blobs and its
//     manifest (push) finds what it expects;
//   - a blob a request is reading or mounting right now;
//   - any blob while a manifest push is in flight, since distribution checks
//     a manifest's blobs before it writes the manifest.
type evictor struct {
	driver  storagedriver.StorageDriver
	ns      distribution.Namespace
	maxSize int64
	maxAge  time.Duration
	grace   time.Duration
	log     *slog.Logger

	mu       sync.Mutex
	used     map[string]time.Time // "repo@digest", "repo:tag" or a blob digest -> last use
	reading  map[digest.Digest]int
	pushing  int
	sweeping sync.Mutex
}

func newEvictor(ctx context.Context, driver storagedriver.StorageDriver, cfg Config, log *slog.Logger) (*evictor, error) {
	ns, err := storage.NewRegistry(ctx, driver, storage.EnableDelete)
	if err != nil {
		return nil, fmt.Errorf("cache server: open store for eviction: %w", err)
	}
	return &evictor{
		driver: driver, ns: ns, maxSize: cfg.MaxSize, maxAge: cfg.MaxAge, grace: cfg.EvictGrace, log: log,
		used: map[string]time.Time{}, reading: map[digest.Digest]int{},
	}, nil
}

// run sweeps every interval until ctx ends.
func (e *evictor) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := e.sweep(ctx); err != nil && ctx.Err() == nil {
				e.log.Error("eviction sweep", "err", err)
			}
		}
	}
}

// track records uses and in-flight reads around the registry handler.
func (e *evictor) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repo, kind, ref, ok := splitAPIPath(r.URL.Path)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		var blob digest.Digest
		switch {
		case kind == "blobs" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
			blob, _ = digest.Parse(ref)
		case kind == "uploads" && r.Method == http.MethodPost && r.URL.Query().Get("mount") != "":
			blob, _ = digest.Parse(r.URL.Query().Get("mount"))
		}
		e.mu.Lock()
		switch {
		case blob != "":
			e.reading[blob]++
		case kind == "manifests" && r.Method == http.MethodPut:
			e.pushing++
		}
		e.mu.Unlock()
		m := httpsnoop.CaptureMetrics(next, w, r)
		e.mu.Lock()
		defer e.mu.Unlock()
		switch {
		case blob != "":
			if e.reading[blob]--; e.reading[blob] <= 0 {
				delete(e.reading, blob)
			}
		case kind == "manifests" && r.Method == http.MethodPut:
			e.pushing--
		}
		// Only an answered request is a use: a client that may not read
		// an image must not keep it alive.
		if m.Code >= 400 {
			return
		}
		now := time.Now()
		if blob != "" {
			e.used[blob.String()] = now
		}
		if kind == "manifests" {
			e.used[manifestKey(repo, ref)] = now
		}
	})
}

func manifestKey(repo, ref string) string {
	if strings.Contains(ref, ":") {
		return repo + "@" + ref
	}
	return repo + ":" + ref
}

// splitAPIPath splits /v2/<repo>/{manifests,blobs}/<ref> and
// /v2/<repo>/blobs/uploads/...
func splitAPIPath(p string) (repo, kind, ref string, ok bool) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return "", "", "", false
	}
	if i := strings.LastIndex(rest, "/blobs/uploads"); i > 0 {
		return rest[:i], "uploads", "", true
	}
	for _, k := range []string{"manifests", "blobs"} {
		if i := strings.LastIndex(rest, "/"+k+"/"); i > 0 {
			return rest[:i], k, rest[i+len(k)+2:], true
		}
	}
	return "", "", "", false
}

// image is a top-level manifest and what it reaches.
type image struct {
	repo      string
	digest    digest.Digest
	manifests []digest.Digest // itself first, then child manifests
	blobs     []digest.Digest // every blob it reaches, manifests included
	tags      map[digest.Digest][]string
	lastUse   time.Time
}

// sweep evicts what the bounds require; one sweep at a time.
func (e *evictor) sweep(ctx context.Context) error {
	e.sweeping.Lock()
	defer e.sweeping.Unlock()
	blobSize, blobTime, err := e.blobs(ctx)
	if err != nil {
		return err
	}
	images, err := e.images(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	e.mu.Lock()
	for i := range images {
		for _, m := range images[i].manifests {
			images[i].lastUse = latest(images[i].lastUse, e.used[images[i].repo+"@"+m.String()])
			for _, tag := range images[i].tags[m] {
				images[i].lastUse = latest(images[i].lastUse, e.used[images[i].repo+":"+tag])
			}
		}
	}
	e.mu.Unlock()
	slices.SortFunc(images, func(a, b *image) int { return a.lastUse.Compare(b.lastUse) })

	live := make([]bool, len(images))
	for i := range live {
		live[i] = true
	}
	size := func() int64 {
		reach := reachable(images, live)
		var n int64
		for d, s := range blobSize {
			if reach[d] || now.Sub(blobTime[d]) < e.grace {
				n += s
			}
		}
		return n
	}
	total := size()
	storeBytes.Set(float64(total))
	for i, img := range images {
		if now.Sub(img.lastUse) < e.grace {
			break // sorted: every later image is younger still
		}
		old := e.maxAge > 0 && now.Sub(img.lastUse) > e.maxAge
		big := e.maxSize > 0 && total > e.maxSize
		if !old && !big {
			break
		}
		live[i] = false
		total = size()
	}
	reach := reachable(images, live)
	vacuum := storage.NewVacuum(ctx, e.driver)
	for i, img := range images {
		if live[i] {
			continue
		}
		if err := e.removeImage(ctx, vacuum, img, reach); err != nil {
			return err
		}
	}
	removed, err := e.removeBlobs(vacuum, blobSize, blobTime, reach, now)
	if err != nil {
		return err
	}
	if removed > 0 {
		e.log.Info("evicted blobs", "blobs", removed, "store_bytes", total)
	}
	return nil
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// reachable is every manifest and blob some live image reaches.
func reachable(images []*image, live []bool) map[digest.Digest]bool {
	reach := map[digest.Digest]bool{}
	for i, img := range images {
		if live[i] {
			for _, b := range img.blobs {
				reach[b] = true
			}
		}
	}
	return reach
}

// removeImage deletes an image's tags, then its manifests top-down, keeping
// child manifests another live image reaches.
func (e *evictor) removeImage(ctx context.Context, vacuum storage.Vacuum, img *image, reach map[digest.Digest]bool) error {
	named, err := reference.WithName(img.repo)
	if err != nil {
		return err
	}
	repo, err := e.ns.Repository(ctx, named)
	if err != nil {
		return err
	}
	for _, m := range img.manifests {
		if reach[m] {
			continue
		}
		for _, tag := range img.tags[m] {
			if err := repo.Tags(ctx).Untag(ctx, tag); err != nil {
				return fmt.Errorf("evict %s:%s: %w", img.repo, tag, err)
			}
		}
		if err := vacuum.RemoveManifest(img.repo, m, nil); err != nil {
			return fmt.Errorf("evict %s@%s: %w", img.repo, m, err)
		}
		e.mu.Lock()
		delete(e.used, img.repo+"@"+m.String())
		for _, tag := range img.tags[m] {
			delete(e.used, img.repo+":"+tag)
		}
		e.mu.Unlock()
		evictions.WithLabelValues("manifest").Inc()
		e.log.Info("evicted manifest", "repo", img.repo, "digest", m.String(), "last_use", img.lastUse)
	}
	return nil
}

// removeBlobs deletes the blobs no live image reaches, unless one is in
// use or young, or a manifest push is in flight.
func (e *evictor) removeBlobs(vacuum storage.Vacuum, size map[digest.Digest]int64, mtime map[digest.Digest]time.Time, reach map[digest.Digest]bool, now time.Time) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pushing > 0 {
		return 0, nil // the next sweep removes them
	}
	n := 0
	for d := range size {
		if reach[d] || e.reading[d] > 0 || now.Sub(mtime[d]) < e.grace || now.Sub(e.used[d.String()]) < e.grace {
			continue
		}
		if err := vacuum.RemoveBlob(d.String()); err != nil {
			return n, fmt.Errorf("evict blob %s: %w", d, err)
		}
		delete(e.used, d.String())
		evictions.WithLabelValues("blob").Inc()
		n++
	}
	return n, nil
}

// blobs lists the store's blobs with their sizes and write times.
func (e *evictor) blobs(ctx context.Context) (map[digest.Digest]int64, map[digest.Digest]time.Time, error) {
	size := map[digest.Digest]int64{}
	mtime := map[digest.Digest]time.Time{}
	err := e.ns.Blobs().Enumerate(ctx, func(d digest.Digest) error {
		fi, err := e.driver.Stat(ctx, blobDataPath(d))
		if err != nil {
			var nf storagedriver.PathNotFoundError
			if errors.As(err, &nf) {
				return nil // removed meanwhile
			}
			return err
		}
		size[d], mtime[d] = fi.Size(), fi.ModTime()
		return nil
	})
	var nf storagedriver.PathNotFoundError
	if err != nil && !errors.As(err, &nf) { // none yet: an empty store
		return nil, nil, fmt.Errorf("list blobs: %w", err)
	}
	return size, mtime, nil
}

// blobDataPath is where distribution's storage layout keeps a blob's bytes.
func blobDataPath(d digest.Digest) string {
	return path.Join("/docker/registry/v2/blobs", d.Algorithm().String(), d.Encoded()[:2], d.Encoded(), "data")
}

// images lists every repository's top-level manifests with what they
// reach and their tags; a manifest's initial last use is its link's time.
func (e *evictor) images(ctx context.Context) ([]*image, error) {
	var out []*image
	repos, ok := e.ns.(distribution.RepositoryEnumerator)
	if !ok {
		return nil, fmt.Errorf("store cannot list repositories")
	}
	err := repos.Enumerate(ctx, func(name string) error {
		imgs, err := e.repoImages(ctx, name)
		out = append(out, imgs...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return out, nil
}

func (e *evictor) repoImages(ctx context.Context, name string) ([]*image, error) {
	named, err := reference.WithName(name)
	if err != nil {
		return nil, err
	}
	repo, err := e.ns.Repository(ctx, named)
	if err != nil {
		return nil, err
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	enum, ok := ms.(distribution.ManifestEnumerator)
	if !ok {
		return nil, fmt.Errorf("store cannot list manifests")
	}
	refs := map[digest.Digest][]digest.Digest{}
	isManifest := map[digest.Digest]bool{}
	linkTime := map[digest.Digest]time.Time{}
	err = enum.Enumerate(ctx, func(d digest.Digest) error {
		m, err := ms.Get(ctx, d)
		if err != nil {
			return nil // half written or removed meanwhile: not an image yet
		}
		isManifest[d] = true
		for _, desc := range m.References() {
			refs[d] = append(refs[d], desc.Digest)
		}
		if fi, err := e.driver.Stat(ctx, path.Join("/docker/registry/v2/repositories", name, "_manifests/revisions", d.Algorithm().String(), d.Encoded(), "link")); err == nil {
			linkTime[d] = fi.ModTime()
		}
		return nil
	})
	var nf storagedriver.PathNotFoundError
	if errors.As(err, &nf) {
		return nil, nil // a repository with no manifests yet
	}
	if err != nil {
		return nil, err
	}
	tags := map[digest.Digest][]string{}
	all, err := repo.Tags(ctx).All(ctx)
	if err == nil {
		for _, t := range all {
			if desc, err := repo.Tags(ctx).Get(ctx, t); err == nil {
				tags[desc.Digest] = append(tags[desc.Digest], t)
			}
		}
	}
	child := map[digest.Digest]bool{}
	for _, rs := range refs {
		for _, r := range rs {
			if isManifest[r] {
				child[r] = true
			}
		}
	}
	var out []*image
	for d := range isManifest {
		if child[d] {
			continue
		}
		img := &image{repo: name, digest: d, tags: tags, lastUse: linkTime[d]}
		seen := map[digest.Digest]bool{}
		var walk func(digest.Digest)
		walk = func(m digest.Digest) {
			if seen[m] {
				return
			}
			seen[m] = true
			img.manifests = append(img.manifests, m)
			img.blobs = append(img.blobs, m)
			for _, r := range refs[m] {
				if isManifest[r] {
					walk(r)
				} else {
					img.blobs = append(img.blobs, r)
				}
			}
		}
		walk(d)
		out = append(out, img)
	}
	return out, nil
}

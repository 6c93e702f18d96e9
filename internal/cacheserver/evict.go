package cacheserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
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
//   - any blob while a manifest push is in flight on this server, since
//     distribution checks a manifest's blobs before it writes the manifest.
//
// Several servers may bound one store (an S3 bucket). Each publishes what
// it saw used, and what it is reading right now, in its use record (see
// usesRoot) every flush interval, and each sweep takes every server's
// records into account, so a read through one server keeps an image alive
// against all. What another server did in its last flush interval is not
// yet visible, which the grace covers as long as it is longer than the
// flush interval. Sweeps need no lock between servers: each removes only
// what its own listing shows unreachable and unused, tolerates what
// another sweep removed first, and checks the use records again just
// before it removes blobs. The one race left, a manifest another server
// writes between its check of a blob and a sweep's removal of that blob
// (the client must have found the blob unused for the whole grace period
// before), leaves a manifest that names a missing blob; every sweep looks
// for such manifests and removes them, so a pull finds the image missing
// (a cache miss) rather than broken.
type evictor struct {
	driver  storagedriver.StorageDriver
	ns      distribution.Namespace
	server  string // this server's use record
	mirror  bool   // a pull-through store, whose manifests precede their blobs
	maxSize int64
	maxAge  time.Duration
	grace   time.Duration
	flushes time.Duration
	log     *slog.Logger

	mu      sync.Mutex
	used    map[string]time.Time // manifestKey or a blob digest -> last use
	reading map[digest.Digest]int
	pushing int

	// sweeping serialises this server's sweeps; the caches are the
	// sweep's. A manifest never changes under its digest, nor a tag link
	// without its write time.
	sweeping  sync.Mutex
	manifests map[digest.Digest]manifestRefs
	tagLinks  map[string]tagLink
}

type tagLink struct {
	mtime  time.Time
	digest digest.Digest
}

// maxUseFlushInterval is the longest time between two writes of a
// server's use record; with a short grace, a quarter of it.
const maxUseFlushInterval = 15 * time.Second

func newEvictor(ctx context.Context, driver storagedriver.StorageDriver, cfg Config, mirror bool, log *slog.Logger) (*evictor, error) {
	ns, err := storage.NewRegistry(ctx, driver, storage.EnableDelete)
	if err != nil {
		return nil, fmt.Errorf("cache server: open store for eviction: %w", err)
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("cache server: server id: %w", err)
	}
	return &evictor{
		driver: driver, ns: ns, server: hex.EncodeToString(id), mirror: mirror,
		maxSize: cfg.MaxSize, maxAge: cfg.MaxAge, grace: cfg.EvictGrace,
		flushes: max(min(maxUseFlushInterval, cfg.EvictGrace/4), 10*time.Millisecond), log: log,
		used: map[string]time.Time{}, reading: map[digest.Digest]int{},
		manifests: map[digest.Digest]manifestRefs{}, tagLinks: map[string]tagLink{},
	}, nil
}

// run publishes uses every flush interval and sweeps every interval until
// ctx ends, then publishes once more.
func (e *evictor) run(ctx context.Context, interval time.Duration) {
	flush := time.NewTicker(e.flushes)
	defer flush.Stop()
	sweep := time.NewTicker(interval)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := e.flush(fctx); err != nil {
				e.log.Warn("eviction: last use record", "err", err)
			}
			return
		case <-flush.C:
			if err := e.flush(ctx); err != nil && ctx.Err() == nil {
				e.log.Error("eviction: use record", "err", err)
			}
		case <-sweep.C:
			if err := e.sweep(ctx); err != nil && ctx.Err() == nil {
				e.log.Error("eviction sweep", "err", err)
			}
		}
	}
}

// flush replaces this server's use record; what it is reading right now
// counts as used now.
func (e *evictor) flush(ctx context.Context) error {
	now := time.Now()
	e.mu.Lock()
	uses := make(map[string]time.Time, len(e.used)+len(e.reading))
	for k, t := range e.used {
		uses[k] = t
	}
	for d := range e.reading {
		uses[d.String()] = now
	}
	e.mu.Unlock()
	return writeUses(ctx, e.driver, e.server, uses)
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

// sweep evicts what the bounds require and removes manifests that name a
// missing blob; one sweep at a time on this server.
func (e *evictor) sweep(ctx context.Context) error {
	e.sweeping.Lock()
	defer e.sweeping.Unlock()
	blobs, err := listBlobs(ctx, e.driver)
	if err != nil {
		return err
	}
	images, err := e.images(ctx, blobs)
	if err != nil {
		return err
	}
	uses, err := e.allUses(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, img := range images {
		for _, m := range img.manifests {
			img.lastUse = latest(img.lastUse, uses[img.repo+"@"+m.String()])
			for _, tag := range img.tags[m] {
				img.lastUse = latest(img.lastUse, uses[img.repo+":"+tag])
			}
		}
	}
	slices.SortFunc(images, func(a, b *image) int { return a.lastUse.Compare(b.lastUse) })

	live := make([]bool, len(images))
	for i := range live {
		live[i] = true
	}
	size := func() int64 {
		reach := reachable(images, live)
		var n int64
		for d, b := range blobs {
			if reach[d] || now.Sub(b.mtime) < e.grace {
				n += b.size
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
	for i, img := range images {
		if !live[i] {
			if err := e.removeImage(ctx, img, reach, "evicted manifest"); err != nil {
				return err
			}
		}
	}
	removed, err := e.removeBlobs(ctx, blobs, reach, uses, now)
	if err != nil {
		return err
	}
	if len(removed) > 0 {
		e.log.Info("evicted blobs", "blobs", len(removed), "store_bytes", total)
		// A manifest another server wrote while this sweep removed a blob
		// it names must not outlive the sweep.
		for d := range removed {
			delete(blobs, d)
		}
		if _, err := e.images(ctx, blobs); err != nil {
			return err
		}
	}
	e.forget(blobs, images)
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

// allUses merges this server's uses with every other server's record,
// the latest use winning. The records of servers that are gone are taken
// into this server's own, to be published with it, and removed.
func (e *evictor) allUses(ctx context.Context) (map[string]time.Time, error) {
	live, dead, err := otherUses(ctx, e.driver, e.server, e.grace)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	for _, uses := range dead {
		for k, t := range uses {
			e.used[k] = latest(e.used[k], t)
		}
	}
	all := make(map[string]time.Time, len(e.used))
	for k, t := range e.used {
		all[k] = t
	}
	e.mu.Unlock()
	for server := range dead {
		if err := removeUses(ctx, e.driver, server); err != nil {
			return nil, err
		}
	}
	for _, uses := range live {
		for k, t := range uses {
			all[k] = latest(all[k], t)
		}
	}
	return all, nil
}

// removeImage deletes an image's tags, then its manifests top-down, keeping
// child manifests another live image reaches. Another server's sweep may
// have removed some of it already.
func (e *evictor) removeImage(ctx context.Context, img *image, reach map[digest.Digest]bool, why string) error {
	named, err := reference.WithName(img.repo)
	if err != nil {
		return err
	}
	repo, err := e.ns.Repository(ctx, named)
	if err != nil {
		return err
	}
	vacuum := storage.NewVacuum(ctx, e.driver)
	for _, m := range img.manifests {
		if reach[m] {
			continue
		}
		for _, tag := range img.tags[m] {
			// A push may have moved the tag since the listing.
			if desc, err := repo.Tags(ctx).Get(ctx, tag); err != nil || desc.Digest != m {
				continue
			}
			if err := repo.Tags(ctx).Untag(ctx, tag); err != nil && !notFound(err) {
				return fmt.Errorf("evict %s:%s: %w", img.repo, tag, err)
			}
		}
		if err := vacuum.RemoveManifest(img.repo, m, nil); err != nil && !notFound(err) {
			return fmt.Errorf("evict %s@%s: %w", img.repo, m, err)
		}
		e.mu.Lock()
		delete(e.used, img.repo+"@"+m.String())
		for _, tag := range img.tags[m] {
			delete(e.used, img.repo+":"+tag)
		}
		e.mu.Unlock()
		evictions.WithLabelValues("manifest").Inc()
		e.log.Info(why, "repo", img.repo, "digest", m.String(), "last_use", img.lastUse)
	}
	return nil
}

// removeBlobs deletes the blobs no live image reaches, unless one is in
// use or young, or a manifest push is in flight here. It reads the use
// records once more first, to see what other servers used since the
// sweep began.
func (e *evictor) removeBlobs(ctx context.Context, blobs map[digest.Digest]blobInfo, reach map[digest.Digest]bool, uses map[string]time.Time, now time.Time) (map[digest.Digest]bool, error) {
	unused := func(d digest.Digest, uses map[string]time.Time) bool {
		return !reach[d] && now.Sub(blobs[d].mtime) >= e.grace && now.Sub(uses[d.String()]) >= e.grace
	}
	var candidates []digest.Digest
	for d := range blobs {
		if unused(d, uses) {
			candidates = append(candidates, d)
		}
	}
	if len(candidates) == 0 {
		return nil, nil
	}
	uses, err := e.allUses(ctx)
	if err != nil {
		return nil, err
	}
	vacuum := storage.NewVacuum(ctx, e.driver)
	removed := map[digest.Digest]bool{}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pushing > 0 {
		return nil, nil // the next sweep removes them
	}
	for _, d := range candidates {
		if !unused(d, uses) || e.reading[d] > 0 || now.Sub(e.used[d.String()]) < e.grace {
			continue
		}
		if err := vacuum.RemoveBlob(d.String()); err != nil && !notFound(err) {
			return removed, fmt.Errorf("evict blob %s: %w", d, err)
		}
		delete(e.used, d.String())
		removed[d] = true
		evictions.WithLabelValues("blob").Inc()
	}
	return removed, nil
}

// images lists every repository's top-level manifests with what they
// reach and their tags; a manifest's initial last use is the latest write
// of its link or of a tag's. On the way it removes every manifest that
// names a blob (or child manifest) the store does not hold, and every
// manifest an index of those reaches, top-down: what a sweep raced with,
// or a crash left. A pull-through store is exempt, since it fetches a
// manifest's blobs after the manifest.
func (e *evictor) images(ctx context.Context, blobs map[digest.Digest]blobInfo) ([]*image, error) {
	repos, err := listRepos(ctx, e.driver)
	if err != nil {
		return nil, err
	}
	var out []*image
	tagLinks := map[string]tagLink{}
	defer func() { e.tagLinks = tagLinks }()
	for name, links := range repos {
		imgs, broken, err := e.repoImages(ctx, name, links, blobs, tagLinks)
		if err != nil {
			return nil, fmt.Errorf("list images of %s: %w", name, err)
		}
		for _, img := range broken {
			if err := e.removeImage(ctx, img, nil, "removed manifest naming a missing blob"); err != nil {
				return nil, err
			}
		}
		out = append(out, imgs...)
	}
	return out, nil
}

// repoImages is one repository's images, whole and broken.
func (e *evictor) repoImages(ctx context.Context, name string, links *repoLinks, blobs map[digest.Digest]blobInfo, tagLinks map[string]tagLink) (whole, broken []*image, err error) {
	refs := map[digest.Digest]manifestRefs{}
	var gone []digest.Digest // links to a manifest blob no longer there
	for d := range links.revisions {
		r, ok := e.manifests[d]
		if !ok {
			if r, err = readManifest(ctx, e.driver, d); notFound(err) {
				gone = append(gone, d)
				continue
			} else if err != nil {
				return nil, nil, err
			}
			e.manifests[d] = r
		}
		refs[d] = r
	}
	tags := map[digest.Digest][]string{}
	tagTime := map[digest.Digest]time.Time{}
	for tag, fi := range links.tags {
		l, ok := e.tagLinks[fi.Path()]
		if !ok || !l.mtime.Equal(fi.ModTime()) {
			d, err := readLink(ctx, e.driver, fi.Path())
			if notFound(err) {
				continue // untagged meanwhile
			} else if err != nil {
				return nil, nil, fmt.Errorf("tag %s: %w", tag, err)
			}
			l = tagLink{mtime: fi.ModTime(), digest: d}
		}
		tagLinks[fi.Path()] = l
		tags[l.digest] = append(tags[l.digest], tag)
		tagTime[l.digest] = latest(tagTime[l.digest], l.mtime)
	}
	for _, d := range gone {
		broken = append(broken, &image{repo: name, digest: d, manifests: []digest.Digest{d}, tags: tags})
	}

	// A reference is missing if the listing lacks it and it is not there
	// now either (pushed since the listing).
	missing := map[digest.Digest]bool{}
	has := func(d digest.Digest) bool {
		if _, ok := blobs[d]; ok {
			return true
		}
		if m, ok := missing[d]; ok {
			return !m
		}
		_, err := e.driver.Stat(ctx, blobDataPath(d))
		missing[d] = notFound(err)
		return !missing[d]
	}
	// A manifest is broken if it names a missing blob or a broken manifest.
	brokenM := map[digest.Digest]bool{}
	var isBroken func(d digest.Digest, depth int) bool
	isBroken = func(d digest.Digest, depth int) bool {
		if b, ok := brokenM[d]; ok || depth > 8 {
			return b
		}
		brokenM[d] = false
		for _, r := range refs[d].refs {
			if refs[d].foreign[r] {
				continue
			}
			if _, child := refs[r]; (child && isBroken(r, depth+1)) || !has(r) {
				brokenM[d] = true
				break
			}
		}
		return brokenM[d]
	}

	child := map[digest.Digest]bool{}
	for _, r := range refs {
		for _, c := range r.refs {
			if _, ok := refs[c]; ok {
				child[c] = true
			}
		}
	}
	for d := range refs {
		if child[d] {
			continue
		}
		img := &image{repo: name, digest: d, tags: tags, lastUse: latest(links.revisions[d], tagTime[d])}
		seen := map[digest.Digest]bool{}
		var walk func(digest.Digest)
		walk = func(m digest.Digest) {
			if seen[m] {
				return
			}
			seen[m] = true
			img.manifests = append(img.manifests, m)
			img.blobs = append(img.blobs, m)
			img.lastUse = latest(img.lastUse, tagTime[m])
			for _, r := range refs[m].refs {
				if _, ok := refs[r]; ok {
					walk(r)
				} else {
					img.blobs = append(img.blobs, r)
				}
			}
		}
		walk(d)
		if !e.mirror && isBroken(d, 0) {
			// Only the broken part goes: a child manifest that is whole
			// stays for the other images that reach it, or the next sweep.
			var bad []digest.Digest
			for _, m := range img.manifests {
				if isBroken(m, 0) {
					bad = append(bad, m)
				}
			}
			broken = append(broken, &image{repo: name, digest: d, manifests: bad, tags: tags})
			continue
		}
		whole = append(whole, img)
	}
	return whole, broken, nil
}

// forget drops what the store no longer holds from this server's uses and
// the sweep's caches, so they stay as big as the store.
func (e *evictor) forget(blobs map[digest.Digest]blobInfo, images []*image) {
	keep := map[string]bool{}
	keepManifest := map[digest.Digest]bool{}
	for d := range blobs {
		keep[d.String()] = true
	}
	for _, img := range images {
		for _, m := range img.manifests {
			keep[img.repo+"@"+m.String()] = true
			keepManifest[m] = true
			for _, tag := range img.tags[m] {
				keep[img.repo+":"+tag] = true
			}
		}
	}
	now := time.Now()
	e.mu.Lock()
	for k, t := range e.used {
		if !keep[k] && now.Sub(t) >= e.grace {
			delete(e.used, k)
		}
	}
	e.mu.Unlock()
	for d := range e.manifests {
		if !keepManifest[d] {
			delete(e.manifests, d)
		}
	}
}

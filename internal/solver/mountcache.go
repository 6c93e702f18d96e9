package solver

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/lock"
	"github.com/kiln-build/kiln/internal/mountstore"
)

// RUN --mount=type=cache contents travel with the cache: BuildKit cannot
// export them (moby/buildkit#1474, #1512), so every fresh runner loses its
// module and compiler caches. kiln keeps them content-addressed in the
// cache's own store (internal/mountstore): exported with mode=max only
// when a step that used them ran, uploading only packs the --cache-to
// lacks; restored only when a step that mounts them misses and the runner
// has no such directory yet, from the first --cache-from that has them.

// MountReport is one cache mount in the build summary.
type MountReport struct {
	ID string `json:"id"`
	// RestoredFrom names the store the contents came from ("" when none
	// had them or the runner had the directory already).
	RestoredFrom   string  `json:"restoredFrom,omitempty"`
	RestoredFiles  int     `json:"restoredFiles,omitempty"`
	RestoredBytes  int64   `json:"restoredBytes,omitempty"`  // file bytes written
	FetchedBytes   int64   `json:"fetchedBytes,omitempty"`   // pack bytes downloaded
	MissingFiles   int     `json:"missingFiles,omitempty"`   // left out: a pack was damaged or gone
	RestoreSeconds float64 `json:"restoreSeconds,omitempty"` //
	// SavedTo names the --cache-to the mount was saved to; SavedFiles and
	// SavedBytes are what its manifest holds, UploadedFiles and
	// UploadedBytes what had to be packed and sent (bytes compressed),
	// EvictedFiles what cache-mount-max-size left out.
	SavedTo       string  `json:"savedTo,omitempty"`
	SavedFiles    int     `json:"savedFiles,omitempty"`
	SavedBytes    int64   `json:"savedBytes,omitempty"`
	UploadedFiles int     `json:"uploadedFiles,omitempty"`
	UploadedBytes int64   `json:"uploadedBytes,omitempty"`
	EvictedFiles  int     `json:"evictedFiles,omitempty"`
	EvictedBytes  int64   `json:"evictedBytes,omitempty"`
	SaveSeconds   float64 `json:"saveSeconds,omitempty"`
}

// line is the mount's line in the build's closing summary: what its
// restore fetched from where, what its save uploaded where.
func (r MountReport) line() string {
	secs := func(s float64) string {
		return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
	}
	var parts []string
	if r.RestoredFrom != "" {
		p := fmt.Sprintf("restored cache mount %s from %s: %d files, %s (%s fetched) in %s",
			r.ID, r.RestoredFrom, r.RestoredFiles, humanBytes(r.RestoredBytes), humanBytes(r.FetchedBytes), secs(r.RestoreSeconds))
		if r.MissingFiles > 0 {
			p += fmt.Sprintf(", %d files left out", r.MissingFiles)
		}
		parts = append(parts, p)
	}
	if r.SavedTo != "" {
		p := fmt.Sprintf("saved to %s: %d files, %s; %d new files packed, %s uploaded in %s",
			r.SavedTo, r.SavedFiles, humanBytes(r.SavedBytes), r.UploadedFiles, humanBytes(r.UploadedBytes), secs(r.SaveSeconds))
		if len(parts) == 0 {
			p = "saved cache mount " + r.ID + " to" + strings.TrimPrefix(p, "saved to")
		}
		if r.EvictedFiles > 0 {
			p += fmt.Sprintf("; %d least recently used files (%s) over cache-mount-max-size left out", r.EvictedFiles, humanBytes(r.EvictedBytes))
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

// mountReports collects MountReports by id.
type mountReports struct {
	mu sync.Mutex
	by map[string]*MountReport
	// from is the store each mount was restored from, unreadable the
	// packs its restore could not read (not to be reused by its save).
	from       map[string]cache.Store
	unreadable map[string]*mountstore.Unreadable
}

func (r *mountReports) restoredFrom(id string) (cache.Store, *mountstore.Unreadable) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.from[id], r.unreadable[id]
}

func (r *mountReports) update(id string, f func(*MountReport)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.by == nil {
		r.by = map[string]*MountReport{}
	}
	m := r.by[id]
	if m == nil {
		m = &MountReport{ID: id}
		r.by[id] = m
	}
	f(m)
}

// list is the reports sorted by id.
func (r *mountReports) list() []MountReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]MountReport, 0, len(r.by))
	for _, m := range r.by {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// mountUsed notes that a running step used the cache mount id.
func (b *builder) mountUsed(id, dir string) {
	b.caches.mu.Lock()
	defer b.caches.mu.Unlock()
	if b.caches.mounts == nil {
		b.caches.mounts = map[string]string{}
	}
	b.caches.mounts[id] = dir
}

// mountStatePath is where the runner remembers what it restored or saved
// of a cache mount directory (mountstore.State), beside it.
func mountStatePath(dir string) string { return dir + ".state" }

// restoreMount fills dir, a fresh directory that becomes cache mount id's
// (statePath: its state file), from the first --cache-from that has it.
// It reports whether it did. A store that fails is a warning and an empty
// mount, a damaged pack a warning and a mount without the files it held;
// never a failed build.
func (b *builder) restoreMount(ctx context.Context, id, dir, statePath string) (bool, error) {
	for _, st := range b.caches.from {
		start := time.Now()
		m, _, err := mountstore.Load(ctx, st, id)
		if mountstore.IsMissing(err) {
			continue
		}
		var res mountstore.RestoreResult
		bad := &mountstore.Unreadable{}
		if err == nil {
			err = mountstore.CheckPacks(ctx, st, m)
		}
		if err == nil {
			res, err = mountstore.Restore(ctx, dir, m, mountstore.Source{Store: st, Unreadable: bad}, mountstore.RestoreOptions{})
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if err != nil {
			b.warn(fmt.Sprintf("cache mount %s from %s: %v (starting empty)", id, st, err))
			if err := emptyDir(dir); err != nil {
				return false, err
			}
			continue
		}
		if res.Missing > 0 {
			b.warn(fmt.Sprintf("cache mount %s from %s: %d files left out: %v", id, st, res.Missing, res.Problems))
		}
		if err := mountstore.WriteState(statePath, res.State); err != nil {
			return false, fmt.Errorf("cache mount %s: %w", id, err)
		}
		took := time.Since(start)
		b.mountReps.update(id, func(r *MountReport) {
			if b.mountReps.from == nil {
				b.mountReps.from, b.mountReps.unreadable = map[string]cache.Store{}, map[string]*mountstore.Unreadable{}
			}
			b.mountReps.from[id], b.mountReps.unreadable[id] = st, bad
			r.RestoredFrom, r.RestoredFiles, r.RestoredBytes = st.String(), res.Files, res.Bytes
			r.FetchedBytes, r.MissingFiles, r.RestoreSeconds = res.Fetched, res.Missing, took.Seconds()
		})
		return true, nil
	}
	return false, nil
}

// emptyDir removes what a failed restore left in dir.
func emptyDir(dir string) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, de := range des {
		if err := os.RemoveAll(dir + "/" + de.Name()); err != nil {
			return err
		}
	}
	return nil
}

// exportMounts saves the cache mounts the build's running steps used
// into w: the packs w lacks, then each mount's manifest.
func (b *builder) exportMounts(ctx context.Context, w cache.Writer, spec CacheSpec) error {
	b.caches.mu.Lock()
	ids := make([]string, 0, len(b.caches.mounts))
	for id := range b.caches.mounts {
		ids = append(ids, id)
	}
	dirs := b.caches.mounts
	b.caches.mu.Unlock()
	sort.Strings(ids)
	for _, id := range ids {
		if err := b.saveMount(ctx, w, spec, id, dirs[id]); err != nil {
			return fmt.Errorf("cache mount %s: %w", id, err)
		}
	}
	return nil
}

// DefaultMountMaxSize bounds each cache mount saved to a --cache-to
// without cache-mount-max-size=.
const DefaultMountMaxSize = 2 << 30

func (b *builder) saveMount(ctx context.Context, w cache.Writer, spec CacheSpec, id, dir string) error {
	start := time.Now()
	unlock, ok, err := b.lockMount(ctx, id, dir)
	if err != nil || !ok {
		return err
	}
	defer unlock()
	from, unreadable := b.mountReps.restoredFrom(id)
	sink := mountstore.Sink{W: w, ID: id, Wrap: func(l v1.Layer) v1.Layer { return b.counting(l, &b.caches.unstepped) },
		Unreadable: unreadable,
		Lost: func(p mountstore.Pack, why string) {
			b.warn(fmt.Sprintf("cache mount %s: pack %s %s: the files it held are packed again", id, p.Digest, why))
		}}
	base, _, err := mountstore.Load(ctx, w, id)
	if mountstore.IsMissing(err) {
		// A branch's first save: the mount came from another cache (main's),
		// whose packs are copied rather than packed again.
		if from != nil && from.String() != w.String() {
			if base, _, err = mountstore.Load(ctx, from, id); err == nil {
				sink.From = from
			}
		}
	}
	if err != nil && !mountstore.IsMissing(err) {
		b.warn(fmt.Sprintf("cache mount %s: %v (saving it whole)", id, err))
	}
	maxSize := spec.MountMaxSize
	if maxSize == 0 {
		maxSize = DefaultMountMaxSize
	}
	res, err := mountstore.Save(ctx, dir, sink, mountstore.SaveOptions{Base: base, State: mountstore.ReadState(mountStatePath(dir)), MaxSize: maxSize})
	if err != nil {
		return err
	}
	mb, err := sink.Commit(ctx, res.Manifest)
	if err != nil {
		return err
	}
	if err := mountstore.WriteState(mountStatePath(dir), res.State); err != nil {
		return err
	}
	took := time.Since(start)
	b.mountReps.update(id, func(r *MountReport) {
		r.SavedTo, r.SavedFiles, r.SavedBytes = w.String(), res.Files, res.Bytes
		r.UploadedFiles, r.UploadedBytes, r.EvictedFiles, r.EvictedBytes = res.NewFiles, res.Uploaded+mb, res.Evicted, res.EvictedBytes
		r.SaveSeconds = took.Seconds()
	})
	return nil
}

// mountArchiveWait bounds how long exporting a cache mount waits for
// other users of it (a RUN of a concurrent build) to finish.
var mountArchiveWait = 30 * time.Second

// lockMount holds cache mount id's lock exclusively while it is saved, so
// no step of this or another kiln writes it meanwhile (a torn save would
// be restored on every fresh runner). When the lock is not free within
// mountArchiveWait, the mount is skipped with a warning: ok is false.
func (b *builder) lockMount(ctx context.Context, id, dir string) (unlock func(), ok bool, err error) {
	wctx, cancel := context.WithTimeout(ctx, mountArchiveWait)
	defer cancel()
	held, err := lock.Acquire(wctx, dir+".lock", lock.Exclusive)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		b.warn(fmt.Sprintf("cache mount %s not exported: still in use by another build after %s (%v)", id, mountArchiveWait, err))
		return nil, false, nil
	}
	return held.Unlock, true, nil
}

package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-build/kiln/internal/registry"
)

// refreshAfter is how stale an indexed record's LastUsed may get before
// re-Putting it rewrites the index. Refreshing on every hit would make a
// no-change build rewrite the whole index (and wait out the settle time)
// to move timestamps; LRU order to within an hour loses nothing that
// MaxAge and MaxEntries need.
const refreshAfter = time.Hour

// Put stages rec and its layer until Flush; nothing is sent now. LastUsed
// is set to now, so re-Putting a record the build hit keeps it alive
// through MaxAge and MaxEntries. A record the index already holds as is
// (same result, same step, its blob there), used within refreshAfter (or
// a tenth of MaxAge, if that is shorter), is not staged: a build that
// changed nothing sends nothing.
func (c *Registry) Put(ctx context.Context, rec Record, l v1.Layer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.readOnly {
		return fmt.Errorf("%s: put %s: %w", c, rec.Key, ErrReadOnly)
	}
	rec, err := prepare(rec, l)
	if err != nil {
		return fmt.Errorf("%s: %w", c, err)
	}
	rec.LastUsed = c.now()
	if rec.Created.IsZero() {
		rec.Created = rec.LastUsed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fresh(rec) {
		delete(c.staged, rec.Key)
		return nil
	}
	c.staged[rec.Key] = &stagedRecord{rec: rec, layer: l}
	return nil
}

// Send uploads the blobs of the records staged so far that the repository
// lacks (see Sender). They are in the repository from then on, named by no
// manifest until Flush writes the index, as Flush's own uploads are until
// its write; a build that fails before Flush leaves them for the
// registry's garbage collection, never a record pointing at a missing
// blob.
func (c *Registry) Send(ctx context.Context) error {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	c.mu.Lock()
	if c.readOnly {
		c.mu.Unlock()
		return fmt.Errorf("%s: send: %w", c, ErrReadOnly)
	}
	staged := make(map[digest.Digest]*stagedRecord, len(c.staged))
	for k, s := range c.staged {
		staged[k] = s
	}
	have := c.present()
	lost := make(map[v1.Hash]bool, len(c.lost))
	for h := range c.lost {
		lost[h] = true
	}
	c.mu.Unlock()
	uploaded, err := c.uploadBlobs(ctx, staged, have, lost)
	if err != nil {
		return fmt.Errorf("%s: send: %w", c, err)
	}
	c.mu.Lock()
	for h := range uploaded {
		c.sent[h] = true
	}
	c.mu.Unlock()
	return nil
}

// present is the set of blobs known to be in the repository: those the
// loaded index names and those Send uploaded. c.mu is held.
func (c *Registry) present() map[v1.Hash]bool {
	have := make(map[v1.Hash]bool, len(c.blobs)+len(c.sent))
	for h := range c.blobs {
		have[h] = true
	}
	for h := range c.sent {
		have[h] = true
	}
	return have
}

// fresh reports whether the index already holds rec (but for LastUsed)
// and its blob, used recently enough that rewriting the index only to
// move LastUsed is not worth a write. c.mu is held.
func (c *Registry) fresh(rec Record) bool {
	have, ok := c.records[rec.Key]
	if !ok || have.Layer != rec.Layer || have.StepID != rec.StepID {
		return false
	}
	if !rec.Layer.IsZero() && !c.blobs[rec.Layer.Digest] {
		return false
	}
	window := refreshAfter
	if c.wo.MaxAge > 0 && c.wo.MaxAge/10 < window {
		window = c.wo.MaxAge / 10
	}
	return rec.LastUsed.Sub(have.LastUsed) < window
}

// flushRounds bounds how often Flush rewrites the index when concurrent
// writers keep replacing it; settleMin and settleJitter are how long it
// waits before reading its write back, maxBackoff the longest random wait
// before a retry (see doc.go, "Concurrent writers").
const (
	flushRounds  = 8
	settleMin    = 150 * time.Millisecond
	settleJitter = 150 * time.Millisecond
	maxBackoff   = 5 * time.Second
	// mergeAttempts bounds how often one round merges again because the
	// manifest changed between its read and its write.
	mergeAttempts = 5
	// writeAttempts bounds the rounds that may fail on a transient error.
	writeAttempts = 3
	// lateSettle is the least wait before the second read-back a
	// contended flush makes.
	lateSettle = time.Second
)

// Flush publishes the staged records (see doc.go, "Concurrent writers"):
// it uploads the blobs the repository lacks and Send did not upload
// (HEAD first; a
// *remote.MountableLayer from another repository of the same registry is
// mounted); then, in rounds, re-reads the index at the ref, merges the
// staged records into it, applies MaxAge and MaxEntries, writes the index
// and the manifest last, waits a short jittered settle time and reads the
// index back; it is done when every staged record that the bounds kept is
// there. An interrupted Flush leaves the previous cache intact. With
// nothing staged it sends nothing. On failure the staged records stay
// staged, so Flush can be retried.
func (c *Registry) Flush(ctx context.Context) error {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()

	c.mu.Lock()
	if len(c.staged) == 0 {
		c.mu.Unlock()
		return ctx.Err()
	}
	if c.readOnly {
		c.mu.Unlock()
		return fmt.Errorf("%s: flush: %w", c, ErrReadOnly)
	}
	wo := c.wo
	flushed := make(map[digest.Digest]*stagedRecord, len(c.staged))
	for k, s := range c.staged {
		flushed[k] = s
	}
	// known is every record this flush has seen in the index (at open, in
	// each re-read and read-back) with the blobs seen named: each write
	// republishes them, so a record another writer's overwrite dropped is
	// restored by whoever saw it and is still flushing.
	known := remoteIndex{records: make(map[digest.Digest]Record, len(c.records)), blobs: make(map[v1.Hash]bool, len(c.blobs))}
	for k, r := range c.records {
		known.records[k] = r
	}
	for h := range c.blobs {
		known.blobs[h] = true
	}
	// gone: blobs the index names that the repository no longer has.
	// Their records are left out of the index written (a registry refuses
	// a manifest naming a blob it lacks), unless this flush uploads them.
	gone := make(map[v1.Hash]bool, len(c.lost))
	for h := range c.lost {
		gone[h] = true
	}
	have := c.present()
	c.mu.Unlock()

	// Blobs first, outside the read-merge-write window, so the window
	// another writer can fall into stays a few requests long.
	uploaded, err := c.uploadBlobs(ctx, flushed, have, gone)
	if err != nil {
		return fmt.Errorf("%s: flush: %w", c, err)
	}
	for h := range uploaded {
		known.blobs[h] = true
		delete(gone, h)
	}

	var lost, failures int
	// contended: another writer showed itself during this flush (the index
	// changed between our read and write, or after our write, or lost our
	// records). Then a success is checked once more, later: a writer slowed
	// down between its read and its write can still overwrite ours.
	contended, lateChecked := false, false
	for round := 1; round <= flushRounds; round++ {
		mine, window, wrote, err := c.mergeAndWrite(ctx, flushed, &known, gone, wo, &contended)
		if err != nil && !errors.Is(err, errBusy) {
			// A reset or a 5xx the client's own retries did not cover:
			// the round is repeated, a few times. Every step of a round is
			// safe to repeat.
			if failures++; failures == writeAttempts || !transient(ctx, err) {
				return err
			}
		}
		if err != nil {
			lost = len(flushed)
			contended = true
			if err := sleepCtx(ctx, rand.N(min(settleMin<<round, maxBackoff))); err != nil {
				return fmt.Errorf("%s: flush: %w", c, err)
			}
			continue
		}
		// Another writer's window is about as long as ours was (same
		// registry, same load): settle for at least twice that.
		settle := max(settleMin, 2*window) + rand.N(settleJitter)
		if err := sleepCtx(ctx, settle); err != nil {
			return fmt.Errorf("%s: flush: %w", c, err)
		}
		back, err := c.read(ctx)
		if err != nil {
			return fmt.Errorf("%s: flush: reading the index back: %w", c, err)
		}
		known.absorb(back)
		if back.manifest != wrote {
			contended = true // someone wrote after us
		}
		lost = c.missing(mine, back)
		if lost == 0 && contended && !lateChecked {
			lateChecked = true
			if err := sleepCtx(ctx, max(lateSettle, 4*window)+rand.N(settleJitter)); err != nil {
				return fmt.Errorf("%s: flush: %w", c, err)
			}
			if back, err = c.read(ctx); err != nil {
				return fmt.Errorf("%s: flush: reading the index back: %w", c, err)
			}
			known.absorb(back)
			lost = c.missing(mine, back)
		}
		if lost > 0 {
			contended = true
			// A concurrent writer replaced our index: back off a random,
			// growing while (so writers that collided spread out), then
			// merge again.
			backoff := min(settleMin<<round, maxBackoff)
			if err := sleepCtx(ctx, rand.N(backoff)); err != nil {
				return fmt.Errorf("%s: flush: %w", c, err)
			}
			continue
		}
		c.mu.Lock()
		c.records, c.blobs = back.records, back.blobs
		for h := range uploaded {
			delete(c.lost, h)
		}
		for k, s := range flushed {
			if c.staged[k] == s { // not re-Put meanwhile
				delete(c.staged, k)
			}
		}
		c.mu.Unlock()
		return nil
	}
	return fmt.Errorf("%s: flush: %d records were still missing after %d rounds of concurrent writers replacing the index", c, lost, flushRounds)
}

// missing counts the keys of mine that idx lacks.
func (c *Registry) missing(mine []digest.Digest, idx remoteIndex) int {
	n := 0
	for _, k := range mine {
		if _, ok := idx.records[k]; !ok {
			n++
		}
	}
	return n
}

// errBusy: the manifest kept changing between mergeAndWrite's read and its
// write; the round is retried after a backoff.
var errBusy = errors.New("the cache index kept changing under concurrent writers")

// mergeAndWrite re-reads the index, merges the staged records into it,
// uploads the new index blob and, unless the manifest changed meanwhile
// (then it merges again, a few times, and else gives up with errBusy),
// PUTs the manifest. So the window in
// which another writer's update can be lost is one HEAD and one PUT long.
// It returns the staged keys the bounds kept (those the read-back must
// find) and how long the last read-merge-write took.
//
// A PUT the registry refuses because the index names blobs it no longer
// has adds them to lost and merges again without their records.
func (c *Registry) mergeAndWrite(ctx context.Context, flushed map[digest.Digest]*stagedRecord, known *remoteIndex, lost map[v1.Hash]bool, wo Bounds, contended *bool) (mine []digest.Digest, window time.Duration, wrote string, err error) {
	for attempt := 1; ; attempt++ {
		began := time.Now()
		var base remoteIndex
		base, err = c.read(ctx)
		if err != nil {
			return nil, 0, "", fmt.Errorf("%s: flush: re-reading the index: %w", c, err)
		}
		if base.inline {
			return nil, 0, "", fmt.Errorf("%s: flush: the ref now holds an image: %w", c, ErrReadOnly)
		}
		known.absorb(base)
		var manifest rawTaggable
		mine, manifest, err = c.writeIndex(ctx, *known, flushed, lost, wo)
		if err != nil {
			return nil, 0, "", err
		}
		now, err := c.manifestDigest(ctx)
		if err != nil {
			return nil, 0, "", fmt.Errorf("%s: flush: %w", c, err)
		}
		if now != base.manifest {
			*contended = true
			// Changed under us: never overwrite a newer index (its writer
			// may have checked it already); merge with it first.
			if attempt == mergeAttempts {
				return nil, 0, "", errBusy
			}
			if err := sleepCtx(ctx, rand.N(settleJitter)); err != nil {
				return nil, 0, "", fmt.Errorf("%s: flush: %w", c, err)
			}
			continue
		}
		if err := remote.Put(c.ref, manifest, c.opts.RemoteOptions(ctx)...); err != nil {
			if gone := c.unknownBlobs(ctx, err, manifest, lost); len(gone) > 0 {
				for _, h := range gone {
					lost[h] = true
				}
				c.markLost(gone...)
				attempt--
				continue
			}
			return nil, 0, "", fmt.Errorf("%s: writing cache manifest: %w", c, err)
		}
		return mine, time.Since(began), digest.FromBytes(manifest.raw).String(), nil
	}
}

// manifestDigest is the digest of the manifest the ref names now (a HEAD),
// or "" when there is none.
func (c *Registry) manifestDigest(ctx context.Context) (string, error) {
	desc, err := remote.Head(c.ref, c.opts.RemoteOptions(ctx)...)
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("checking the cache manifest: %w", err)
	}
	return desc.Digest.String(), nil
}

// unknownBlobs is the blobs, not in lost yet, that a registry refused
// manifest for naming while lacking them (MANIFEST_BLOB_UNKNOWN): those
// its error names, or, when it names none, those of the manifest's layers
// a HEAD does not find. None: err is something else.
func (c *Registry) unknownBlobs(ctx context.Context, err error, manifest rawTaggable, lost map[v1.Hash]bool) []v1.Hash {
	var terr *transport.Error
	if !errors.As(err, &terr) {
		return nil
	}
	var out []v1.Hash
	refused := false
	for _, d := range terr.Errors {
		if d.Code != transport.ManifestBlobUnknownErrorCode && d.Code != transport.BlobUnknownErrorCode {
			continue
		}
		refused = true
		if s, ok := d.Detail.(string); ok {
			if h, err := v1.NewHash(s); err == nil && !lost[h] {
				out = append(out, h)
			}
		}
	}
	if !refused || len(out) > 0 {
		return out
	}
	var m v1.Manifest
	if json.Unmarshal(manifest.raw, &m) != nil {
		return nil
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(registry.DefaultJobs)
	for _, l := range m.Layers {
		if lost[l.Digest] {
			continue
		}
		g.Go(func() error {
			rl, err := remote.Layer(c.ref.Context().Digest(l.Digest.String()), c.opts.RemoteOptions(gctx)...)
			if err != nil {
				return nil
			}
			_, err = rl.Size()
			var terr *transport.Error
			if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
				mu.Lock()
				out = append(out, l.Digest)
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait()
	return out
}

// uploadBlobs uploads the staged records' blobs that the loaded manifest
// does not name (or names but the repository lost), HEAD-checking each
// first, and returns the set of blobs now known to be in the repository.
// A lost blob that cannot be uploaded again (its only source was the
// repository) stays lost: its records are left out, the flush goes on.
func (c *Registry) uploadBlobs(ctx context.Context, flushed map[digest.Digest]*stagedRecord, have, lost map[v1.Hash]bool) (map[v1.Hash]bool, error) {
	layers := map[v1.Hash]v1.Layer{}
	for _, s := range flushed {
		if !s.rec.Layer.IsZero() {
			layers[s.rec.Layer.Digest] = s.layer
		}
	}
	repo := c.ref.Context()
	jobs := c.opts.Jobs
	if jobs <= 0 {
		jobs = registry.DefaultJobs
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	var mu sync.Mutex
	failed := map[v1.Hash]bool{}
	for h, l := range layers {
		if have[h] && !lost[h] {
			continue // named by the manifest loaded, so in the repository
		}
		g.Go(func() error {
			// WriteLayer HEADs the blob first and skips what is there.
			if err := remote.WriteLayer(repo, l, c.opts.RemoteOptions(gctx)...); err != nil {
				if lost[h] && gctx.Err() == nil {
					mu.Lock()
					failed[h] = true
					mu.Unlock()
					return nil
				}
				return fmt.Errorf("uploading blob %s: %w", h, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	present := make(map[v1.Hash]bool, len(layers))
	for h := range layers {
		if !failed[h] {
			present[h] = true
		}
	}
	return present, nil
}

// absorb adds the records and blobs of idx to k; of two records for one
// key, the more recently used stays.
func (k *remoteIndex) absorb(idx remoteIndex) {
	for key, r := range idx.records {
		if old, ok := k.records[key]; !ok || r.LastUsed.After(old.LastUsed) {
			k.records[key] = r
		}
	}
	for h := range idx.blobs {
		k.blobs[h] = true
	}
}

// writeIndex merges the staged records into base (the index as read, with
// every record seen before), applies the bounds, uploads the index blob and
// returns the manifest to PUT, with the keys of the staged records the
// bounds kept.
func (c *Registry) writeIndex(ctx context.Context, base remoteIndex, flushed map[digest.Digest]*stagedRecord, lost map[v1.Hash]bool, wo Bounds) ([]digest.Digest, rawTaggable, error) {
	merged := make(map[digest.Digest]Record, len(base.records)+len(flushed))
	for k, r := range base.records {
		merged[k] = r
	}
	for k, s := range flushed {
		// Another writer's record for the same key is as good (keys cover
		// results), but ours carries this build's last use.
		merged[k] = s.rec
	}
	for k, r := range merged {
		if lost[r.Layer.Digest] {
			delete(merged, k)
		}
	}
	kept := keep(merged, wo, c.now())
	var mine []digest.Digest
	for _, r := range kept {
		if _, ok := flushed[r.Key]; ok {
			mine = append(mine, r.Key)
		}
	}

	// Unique blobs of what remains, in digest order so that the same
	// cache content always makes the same manifest.
	descs := map[v1.Hash]Descriptor{}
	for _, r := range kept {
		if r.Layer.IsZero() {
			continue
		}
		if !base.blobs[r.Layer.Digest] {
			return nil, rawTaggable{}, fmt.Errorf("%s: flush: record %s names blob %s, which is not in the repository", c, r.Key, r.Layer.Digest)
		}
		descs[r.Layer.Digest] = r.Layer
	}
	order := make([]v1.Hash, 0, len(descs))
	for h := range descs {
		order = append(order, h)
	}
	sort.Slice(order, func(i, j int) bool { return order[i].String() < order[j].String() })

	idx := wireIndex{Version: FormatVersion, Records: make([]wireRecord, 0, len(kept))}
	for _, r := range kept {
		idx.Records = append(idx.Records, toWire(r))
	}
	sort.Slice(idx.Records, func(i, j int) bool { return idx.Records[i].Key < idx.Records[j].Key })
	rawIndex, err := json.Marshal(idx)
	if err != nil {
		return nil, rawTaggable{}, fmt.Errorf("%s: encoding index: %w", c, err)
	}
	config := static.NewLayer(rawIndex, IndexMediaType)
	if err := remote.WriteLayer(c.ref.Context(), config, c.opts.RemoteOptions(ctx)...); err != nil {
		return nil, rawTaggable{}, fmt.Errorf("%s: uploading index: %w", c, err)
	}
	cd, _ := config.Digest()
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: IndexMediaType, Digest: cd, Size: int64(len(rawIndex))},
		Layers:        make([]v1.Descriptor, 0, len(order)),
	}
	for _, h := range order {
		d := descs[h]
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
	}
	rawManifest, err := json.Marshal(m)
	if err != nil {
		return nil, rawTaggable{}, fmt.Errorf("%s: encoding manifest: %w", c, err)
	}
	return mine, rawTaggable{raw: rawManifest, mt: types.OCIManifestSchema1}, nil
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// keep applies MaxAge, then MaxEntries (most recently used first), to
// units: a record with the records it requires (RequiresInput: a cache
// mount's manifest and its packs). A unit is kept or dropped whole, by
// its head's last use, and counts every record in it; a unit that does
// not fit in what MaxEntries leaves is skipped for older, smaller ones. A
// required record is kept when a kept unit requires it, else dropped
// with its units; a record no one requires is a unit of its own. A head
// requiring a record merged lacks is dropped: it would restore part of a
// mount.
func keep(merged map[digest.Digest]Record, wo Bounds, now time.Time) []Record {
	required := map[digest.Digest]bool{}
	for _, r := range merged {
		for _, k := range Requires(r) {
			if k != r.Key {
				required[k] = true
			}
		}
	}
	heads := make([]Record, 0, len(merged))
	for _, r := range merged {
		if required[r.Key] || (wo.MaxAge > 0 && now.Sub(r.LastUsed) > wo.MaxAge) {
			continue
		}
		heads = append(heads, r)
	}
	sort.Slice(heads, func(i, j int) bool {
		if !heads[i].LastUsed.Equal(heads[j].LastUsed) {
			return heads[i].LastUsed.After(heads[j].LastUsed)
		}
		return heads[i].Key < heads[j].Key
	})
	out := make([]Record, 0, len(heads))
	in := map[digest.Digest]bool{}
	for _, h := range heads {
		unit := []Record{h}
		complete := true
		for _, k := range Requires(h) {
			r, ok := merged[k]
			if !ok {
				complete = false
				break
			}
			if k != h.Key && !in[k] {
				unit = append(unit, r)
			}
		}
		if !complete || (wo.MaxEntries > 0 && len(out)+len(unit) > wo.MaxEntries) {
			continue
		}
		for _, r := range unit {
			in[r.Key] = true
			out = append(out, r)
		}
	}
	return out
}

// rawTaggable is a manifest ready to PUT.
type rawTaggable struct {
	raw []byte
	mt  types.MediaType
}

func (t rawTaggable) RawManifest() ([]byte, error)        { return t.raw, nil }
func (t rawTaggable) MediaType() (types.MediaType, error) { return t.mt, nil }

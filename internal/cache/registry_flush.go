package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-build/kiln/internal/registry"
)

// Put stages rec and its layer until Flush; nothing is sent now. LastUsed
// is set to now, so re-Putting a record the build hit keeps it alive
// through MaxAge and MaxEntries.
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
	c.staged[rec.Key] = &stagedRecord{rec: rec, layer: l}
	return nil
}

// Flush merges the loaded index with the staged records, applies MaxAge
// and MaxEntries, uploads the blobs the repository lacks (HEAD first; a
// *remote.MountableLayer from another repository of the same registry is
// mounted), then the index, then the manifest, last: an interrupted Flush
// leaves the previous cache intact. With nothing staged it sends nothing.
// On failure the staged records stay staged, so Flush can be retried.
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
	merged := make(map[digest.Digest]Record, len(c.records)+len(c.staged))
	for k, r := range c.records {
		merged[k] = r
	}
	flushed := make(map[digest.Digest]*stagedRecord, len(c.staged))
	layers := map[v1.Hash]v1.Layer{}
	for k, s := range c.staged {
		merged[k] = s.rec
		flushed[k] = s
		if !s.rec.Layer.IsZero() {
			layers[s.rec.Layer.Digest] = s.layer
		}
	}
	have := make(map[v1.Hash]bool, len(c.blobs))
	for h := range c.blobs {
		have[h] = true
	}
	c.mu.Unlock()

	now := c.now()
	kept := keep(merged, wo, now)

	// Unique blobs of what remains, in digest order so that the same
	// cache content always makes the same manifest.
	descs := map[v1.Hash]Descriptor{}
	for _, r := range kept {
		if !r.Layer.IsZero() {
			descs[r.Layer.Digest] = r.Layer
		}
	}
	order := make([]v1.Hash, 0, len(descs))
	for h := range descs {
		order = append(order, h)
	}
	sort.Slice(order, func(i, j int) bool { return order[i].String() < order[j].String() })

	repo := c.ref.Context()
	jobs := c.opts.Jobs
	if jobs <= 0 {
		jobs = registry.DefaultJobs
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, h := range order {
		if have[h] {
			continue // named by the current manifest, so in the repository
		}
		l := layers[h]
		g.Go(func() error {
			if err := remote.WriteLayer(repo, l, c.opts.RemoteOptions(gctx)...); err != nil {
				return fmt.Errorf("uploading blob %s: %w", h, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("%s: flush: %w", c, err)
	}

	idx := wireIndex{Version: FormatVersion, Records: make([]wireRecord, 0, len(kept))}
	for _, r := range kept {
		idx.Records = append(idx.Records, toWire(r))
	}
	sort.Slice(idx.Records, func(i, j int) bool { return idx.Records[i].Key < idx.Records[j].Key })
	rawIndex, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("%s: encoding index: %w", c, err)
	}
	config := static.NewLayer(rawIndex, IndexMediaType)
	if err := remote.WriteLayer(repo, config, c.opts.RemoteOptions(ctx)...); err != nil {
		return fmt.Errorf("%s: uploading index: %w", c, err)
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
		return fmt.Errorf("%s: encoding manifest: %w", c, err)
	}
	if err := remote.Put(c.ref, rawTaggable{raw: rawManifest, mt: types.OCIManifestSchema1}, c.opts.RemoteOptions(ctx)...); err != nil {
		return fmt.Errorf("%s: writing cache manifest: %w", c, err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.records = make(map[digest.Digest]Record, len(kept))
	for _, r := range kept {
		c.records[r.Key] = r
	}
	c.blobs = make(map[v1.Hash]bool, len(order))
	for _, h := range order {
		c.blobs[h] = true
	}
	for k, s := range flushed {
		if c.staged[k] == s { // not re-Put meanwhile
			delete(c.staged, k)
		}
	}
	return nil
}

// keep applies MaxAge, then MaxEntries (most recently used first).
func keep(merged map[digest.Digest]Record, wo RegistryWriteOptions, now time.Time) []Record {
	out := make([]Record, 0, len(merged))
	for _, r := range merged {
		if wo.MaxAge > 0 && now.Sub(r.LastUsed) > wo.MaxAge {
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].LastUsed.Equal(out[j].LastUsed) {
			return out[i].LastUsed.After(out[j].LastUsed)
		}
		return out[i].Key < out[j].Key
	})
	if wo.MaxEntries > 0 && len(out) > wo.MaxEntries {
		out = out[:wo.MaxEntries]
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

package solver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// withHealthStartInterval adds HEALTHCHECK --start-interval to the config.
// go-containerregistry's config type has no field for it.
func withHealthStartInterval(img v1.Image, d time.Duration) (v1.Image, error) {
	return patchConfig(img, func(doc map[string]any) {
		conf, _ := doc["config"].(map[string]any)
		if hc, _ := conf["Healthcheck"].(map[string]any); hc != nil {
			hc["StartInterval"] = int64(d)
		}
	})
}

// inlineCacheField is the config field that names the cache keys of an
// image's layers (BuildKit keeps its inline cache in a top-level config
// field too: "moby.buildkit.cache.v0").
const inlineCacheField = "kiln.cache.v1"

// withInlineCache records each built layer's cache key in the config.
func withInlineCache(img v1.Image, s *stage) (v1.Image, error) {
	if len(s.keys) == 0 {
		return img, nil
	}
	all, err := img.Layers()
	if err != nil {
		return nil, err
	}
	first := len(all) - len(s.keys)
	var layers []map[string]any
	for i, k := range s.keys {
		layers = append(layers, map[string]any{"key": k.String(), "index": first + i})
	}
	return patchConfig(img, func(doc map[string]any) {
		doc[inlineCacheField] = map[string]any{"version": 1, "layers": layers}
	})
}

// patchConfig edits the config JSON and rewrites the manifest to point at
// the new config blob; layers are untouched.
func patchConfig(img v1.Image, edit func(map[string]any)) (v1.Image, error) {
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("patch config: %w", err)
	}
	edit(doc)
	cfgJSON, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	m = m.DeepCopy()
	h, size, err := v1.SHA256(bytes.NewReader(cfgJSON))
	if err != nil {
		return nil, err
	}
	m.Config.Digest, m.Config.Size = h, size
	mJSON, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &patched{base: img, config: cfgJSON, manifest: mJSON, mt: m.MediaType}, nil
}

// patched is img with another config. It is a whole v1.Image of its own,
// not built with partial, so img's layers pass through untouched: a
// mountable layer must stay one for the push to cross-mount it.
type patched struct {
	base             v1.Image
	config, manifest []byte
	mt               types.MediaType
}

func (p *patched) Layers() ([]v1.Layer, error)         { return p.base.Layers() }
func (p *patched) MediaType() (types.MediaType, error) { return p.mt, nil }
func (p *patched) Size() (int64, error)                { return int64(len(p.manifest)), nil }
func (p *patched) RawConfigFile() ([]byte, error)      { return p.config, nil }
func (p *patched) RawManifest() ([]byte, error)        { return p.manifest, nil }
func (p *patched) ConfigName() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(p.config))
	return h, err
}
func (p *patched) ConfigFile() (*v1.ConfigFile, error) {
	return v1.ParseConfigFile(bytes.NewReader(p.config))
}
func (p *patched) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(p.manifest))
	return h, err
}
func (p *patched) Manifest() (*v1.Manifest, error) {
	return v1.ParseManifest(bytes.NewReader(p.manifest))
}
func (p *patched) LayerByDigest(h v1.Hash) (v1.Layer, error) { return p.base.LayerByDigest(h) }
func (p *patched) LayerByDiffID(h v1.Hash) (v1.Layer, error) { return p.base.LayerByDiffID(h) }

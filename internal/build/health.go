package build

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// withHealthStartInterval adds HEALTHCHECK --start-interval to the config.
// go-containerregistry's config type has no field for it, so the config
// JSON is patched and the manifest rewritten to point at the new blob.
func withHealthStartInterval(img v1.Image, d time.Duration) (v1.Image, error) {
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
	conf, _ := doc["config"].(map[string]any)
	hc, _ := conf["Healthcheck"].(map[string]any)
	if hc == nil {
		return img, nil
	}
	hc["StartInterval"] = int64(d)
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
	return partial.CompressedToImage(&patched{base: img, config: cfgJSON, manifest: mJSON, mt: m.MediaType})
}

type patched struct {
	base             v1.Image
	config, manifest []byte
	mt               types.MediaType
}

func (p *patched) RawConfigFile() ([]byte, error)      { return p.config, nil }
func (p *patched) RawManifest() ([]byte, error)        { return p.manifest, nil }
func (p *patched) MediaType() (types.MediaType, error) { return p.mt, nil }
func (p *patched) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	return p.base.LayerByDigest(h)
}

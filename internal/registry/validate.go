package registry

import (
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"
)

// descriptorJSON is the part of an OCI or Docker descriptor that
// validation reads: strings, so a malformed digest is reported here and not
// as go-containerregistry's bare "found non-hex character in hash".
type descriptorJSON struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// validateManifest checks the digests and sizes an image manifest or index
// names, so a corrupt one is reported with what it is (which), instead of
// failing later in a parser with no context. what names it for the error:
// "image REF manifest sha256:...".
func validateManifest(what string, raw []byte) error {
	var m struct {
		Config    *descriptorJSON  `json:"config"`
		Layers    []descriptorJSON `json:"layers"`
		Manifests []descriptorJSON `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("%s: %w: not valid JSON: %v", what, ErrCorrupt, err)
	}
	check := func(role string, d descriptorJSON) error {
		if err := digest.Digest(d.Digest).Validate(); err != nil {
			return fmt.Errorf("%s: %w: %s digest %q: %v", what, ErrCorrupt, role, d.Digest, err)
		}
		if d.Size < 0 {
			return fmt.Errorf("%s: %w: %s %s: negative size %d", what, ErrCorrupt, role, d.Digest, d.Size)
		}
		return nil
	}
	if m.Config != nil {
		if err := check("config", *m.Config); err != nil {
			return err
		}
	}
	for i, l := range m.Layers {
		if err := check(fmt.Sprintf("layer %d", i+1), l); err != nil {
			return err
		}
	}
	for i, c := range m.Manifests {
		if err := check(fmt.Sprintf("manifest %d of the index", i+1), c); err != nil {
			return err
		}
	}
	return nil
}

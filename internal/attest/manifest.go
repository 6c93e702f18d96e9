package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Media types and annotations of BuildKit's attestation storage
// (docs/attestations/attestation-storage.md), by which readers find and
// skip attestation manifests.
const (
	// MediaTypeInToto is the media type of an in-toto statement layer.
	MediaTypeInToto types.MediaType = "application/vnd.in-toto+json"
	// ArtifactType is the artifactType of an attestation manifest stored
	// as an OCI artifact.
	ArtifactType = "application/vnd.docker.attestation.manifest.v1+json"
	// AnnotationPredicateType on a layer repeats its statement's
	// predicateType, so a reader can pick a statement without fetching
	// the others.
	AnnotationPredicateType = "in-toto.io/predicate-type"
	// AnnotationReferenceType and AnnotationReferenceDigest on an index
	// entry mark it as the attestation manifest of the image manifest
	// with that digest. Runtimes skip it; its platform is unknown/unknown
	// too, so one that ignores annotations never picks it to run.
	AnnotationReferenceType   = "vnd.docker.reference.type"
	AnnotationReferenceDigest = "vnd.docker.reference.digest"
	// ReferenceTypeAttestation is AnnotationReferenceType's value.
	ReferenceTypeAttestation = "attestation-manifest"
)

// Manifest returns the attestation manifest of the image manifest subject
// as BuildKit v0.34.2 writes it by default: an OCI artifact
// (artifactType ArtifactType, the OCI empty config, subject pointing at
// the image manifest, so registries with the referrers API list it too)
// whose layers are the statements, in order, each annotated with its
// predicate type. The manifest bytes are BuildKit's, byte for byte, for
// the same statements and subject.
func Manifest(subject v1.Descriptor, statements ...[]byte) (v1.Image, error) {
	if subject.Digest.Hex == "" || subject.MediaType == "" {
		return nil, errors.New("attest: attestation manifest subject needs a media type and a digest")
	}
	layers, err := statementLayers(statements)
	if err != nil {
		return nil, err
	}
	return assemble(layers, []byte("{}"), types.OCIEmptyJSON,
		&ociDescriptor{MediaType: subject.MediaType, Digest: subject.Digest.String(), Size: subject.Size})
}

// LegacyManifest returns the attestation manifest in the form BuildKit
// writes with oci-artifact=false (and at compatibility versions below 30):
// an OCI image whose config is a placeholder, an unknown/unknown image
// config listing each statement as a layer diffID, for registries and
// tools that accept only image manifests.
func LegacyManifest(statements ...[]byte) (v1.Image, error) {
	layers, err := statementLayers(statements)
	if err != nil {
		return nil, err
	}
	cfg := legacyConfig{Architecture: "unknown", OS: "unknown"}
	cfg.RootFS.Type = "layers"
	for _, l := range layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.desc.Digest)
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return assemble(layers, raw, types.OCIConfigJSON, nil)
}

// legacyConfig is the image-spec Image BuildKit writes as the placeholder
// config, with the fields it sets, in image-spec's order. "config" is
// always written: omitempty has no effect on a struct.
type legacyConfig struct {
	Architecture string   `json:"architecture"`
	OS           string   `json:"os"`
	Config       struct{} `json:"config"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// Descriptor returns the image index entry for attestation manifest att
// of the image manifest with digest subject: platform unknown/unknown and
// the reference annotations. BuildKit lists these after all the runnable
// manifests.
func Descriptor(att v1.Image, subject v1.Hash) (v1.Descriptor, error) {
	d, err := partial.Descriptor(att)
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{
		MediaType: d.MediaType,
		Size:      d.Size,
		Digest:    d.Digest,
		Annotations: map[string]string{
			AnnotationReferenceType:   ReferenceTypeAttestation,
			AnnotationReferenceDigest: subject.String(),
		},
		Platform: &v1.Platform{Architecture: "unknown", OS: "unknown"},
	}, nil
}

// assemble makes the attestation manifest of layers with config (of
// media type mt) as its config. With a subject it is an OCI artifact,
// which names its artifact type and, as BuildKit does, inlines its
// (empty) config as data.
func assemble(layers []statementLayer, config []byte, mt types.MediaType, subject *ociDescriptor) (v1.Image, error) {
	m := ociManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        ociDescriptor{MediaType: mt, Digest: sha256(config).String(), Size: int64(len(config))},
		Subject:       subject,
	}
	if subject != nil {
		m.ArtifactType = ArtifactType
		m.Config.Data = config
	}
	img := &image{config: static.NewLayer(config, mt), layers: map[v1.Hash]v1.Layer{}}
	for _, l := range layers {
		m.Layers = append(m.Layers, l.desc)
		img.layers[l.digest] = l.layer
	}
	// BuildKit indents its manifests; matching it makes the digest match.
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	img.manifest = raw
	return partial.CompressedToImage(img)
}

type statementLayer struct {
	layer  v1.Layer
	digest v1.Hash
	desc   ociDescriptor
}

// statementLayers makes a layer of each statement, annotated with the
// predicateType read from it.
func statementLayers(statements [][]byte) ([]statementLayer, error) {
	if len(statements) == 0 {
		return nil, errors.New("attest: an attestation manifest needs at least one statement")
	}
	out := make([]statementLayer, len(statements))
	for i, s := range statements {
		var head struct {
			PredicateType string `json:"predicateType"`
		}
		if err := json.Unmarshal(s, &head); err != nil {
			return nil, fmt.Errorf("attest: statement %d: %w", i, err)
		}
		if head.PredicateType == "" {
			return nil, fmt.Errorf("attest: statement %d has no predicateType", i)
		}
		s = bytes.Clone(s)
		h := sha256(s)
		out[i] = statementLayer{
			layer:  static.NewLayer(s, MediaTypeInToto),
			digest: h,
			desc: ociDescriptor{
				MediaType:   MediaTypeInToto,
				Digest:      h.String(),
				Size:        int64(len(s)),
				Annotations: map[string]string{AnnotationPredicateType: head.PredicateType},
			},
		}
	}
	return out, nil
}

func sha256(b []byte) v1.Hash {
	h, _, _ := v1.SHA256(bytes.NewReader(b)) // reading memory cannot fail
	return h
}

// ociManifest and ociDescriptor are image-spec's Manifest and Descriptor
// with their field order (ggcr's differ), which BuildKit marshals.
type ociManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     types.MediaType `json:"mediaType,omitempty"`
	ArtifactType  string          `json:"artifactType,omitempty"`
	Config        ociDescriptor   `json:"config"`
	Layers        []ociDescriptor `json:"layers"`
	Subject       *ociDescriptor  `json:"subject,omitempty"`
}

type ociDescriptor struct {
	MediaType   types.MediaType   `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Data        []byte            `json:"data,omitempty"`
}

// image is the partial.CompressedImageCore of an attestation manifest:
// all of it in memory, nothing to compress.
type image struct {
	manifest []byte
	config   v1.Layer
	layers   map[v1.Hash]v1.Layer
}

func (i *image) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

func (i *image) RawManifest() ([]byte, error) { return i.manifest, nil }

func (i *image) RawConfigFile() ([]byte, error) {
	rc, err := i.config.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// ConfigLayer gives the config its own media type; partial's default
// would call it an image config, which the empty config of Manifest is
// not.
func (i *image) ConfigLayer() (v1.Layer, error) { return i.config, nil }

func (i *image) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := i.layers[h]; ok {
		return l, nil
	}
	if d, err := i.config.Digest(); err == nil && d == h {
		return i.config, nil
	}
	return nil, fmt.Errorf("attest: no blob %s in the attestation manifest", h)
}

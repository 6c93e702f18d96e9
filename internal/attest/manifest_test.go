package attest

import (
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// statements returns a provenance statement and a second, other-typed
// one, as an image with an SBOM would carry.
func statements(t *testing.T, subject v1.Hash) [][]byte {
	t.Helper()
	subjects := []Subject{{Name: "pkg:docker/me/app@1?platform=linux%2Famd64", Digest: map[string]string{"sha256": subject.Hex}}}
	prov, err := Statement(subjects, Provenance{BuilderPlatform: amd64, Locals: []string{"context", "dockerfile"}})
	if err != nil {
		t.Fatal(err)
	}
	sbom := []byte(`{"_type":"https://in-toto.io/Statement/v1","predicateType":"https://spdx.dev/Document","subject":[],"predicate":{}}`)
	return [][]byte{prov, sbom}
}

func subjectImage(t *testing.T) (v1.Image, v1.Descriptor) {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	size, err := img.Size()
	if err != nil {
		t.Fatal(err)
	}
	return img, v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: h, Size: size}
}

// checkLayers: the layers are the statements, in order, byte for byte,
// with the in-toto media type and the predicate-type annotation, and the
// manifest describes them truly. (validate.Image does not apply: it
// counts only filesystem layers against the config's diff_ids, and
// BuildKit's legacy config lists the statements there.)
func checkLayers(t *testing.T, att v1.Image, stmts [][]byte) {
	t.Helper()
	m, err := att.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := att.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != len(stmts) || len(m.Layers) != len(stmts) {
		t.Fatalf("%d layers, %d in the manifest, want %d", len(layers), len(m.Layers), len(stmts))
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, stmts[i]) {
			t.Errorf("layer %d is not statement %d:\n%s", i, i, got)
		}
		var head struct {
			PredicateType string `json:"predicateType"`
		}
		if err := json.Unmarshal(got, &head); err != nil {
			t.Fatal(err)
		}
		d := m.Layers[i]
		if h, _, _ := v1.SHA256(bytes.NewReader(got)); d.Digest != h || d.Size != int64(len(got)) {
			t.Errorf("layer %d descriptor %s/%d, content %s/%d", i, d.Digest, d.Size, h, len(got))
		}
		if d.MediaType != MediaTypeInToto {
			t.Errorf("layer %d media type %q", i, d.MediaType)
		}
		if len(d.Annotations) != 1 || d.Annotations[AnnotationPredicateType] != head.PredicateType {
			t.Errorf("layer %d annotations %v, want only the predicate type %q", i, d.Annotations, head.PredicateType)
		}
	}
	if m.MediaType != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %q", m.MediaType)
	}
	raw, err := att.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	want, _, _ := v1.SHA256(bytes.NewReader(raw))
	if got, err := att.Digest(); err != nil || got != want {
		t.Errorf("Digest() = %s, %v; RawManifest's digest is %s", got, err, want)
	}
	if mt, err := att.MediaType(); err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("MediaType() = %q, %v", mt, err)
	}
}

func TestManifest(t *testing.T) {
	_, subject := subjectImage(t)
	stmts := statements(t, subject.Digest)
	att, err := Manifest(subject, stmts...)
	if err != nil {
		t.Fatal(err)
	}
	checkLayers(t, att, stmts)
	m, err := att.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.ArtifactType != ArtifactType {
		t.Errorf("artifactType %q", m.ArtifactType)
	}
	if m.Subject == nil || m.Subject.Digest != subject.Digest || m.Subject.Size != subject.Size || m.Subject.MediaType != subject.MediaType {
		t.Errorf("subject %+v, want %+v", m.Subject, subject)
	}
	// The OCI empty descriptor, data included.
	if c := m.Config; c.MediaType != types.OCIEmptyJSON || c.Size != 2 || string(c.Data) != "{}" ||
		c.Digest.String() != "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a" {
		t.Errorf("config %+v, want the OCI empty descriptor", c)
	}
	raw, err := att.RawConfigFile()
	if err != nil || string(raw) != "{}" {
		t.Errorf("config %q, %v", raw, err)
	}
	cl, err := partial.ConfigLayer(att)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := cl.MediaType(); mt != types.OCIEmptyJSON {
		t.Errorf("config layer media type %q", mt)
	}
	// BuildKit's manifest bytes: indented, image-spec field order.
	rm, err := att.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(rm, []byte("{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n  \"artifactType\": ")) {
		t.Errorf("manifest not in BuildKit's layout:\n%s", rm)
	}

	if _, err := Manifest(v1.Descriptor{}, stmts...); err == nil {
		t.Error("Manifest without a subject succeeded")
	}
}

func TestLegacyManifest(t *testing.T) {
	_, subject := subjectImage(t)
	stmts := statements(t, subject.Digest)
	att, err := LegacyManifest(stmts...)
	if err != nil {
		t.Fatal(err)
	}
	checkLayers(t, att, stmts)
	raw, err := att.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := att.Layers()
	d0, _ := layers[0].Digest()
	d1, _ := layers[1].Digest()
	want := `{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":["` + d0.String() + `","` + d1.String() + `"]}}`
	if string(raw) != want {
		t.Errorf("config\n got %s\nwant %s", raw, want)
	}
	m, err := att.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON || m.ArtifactType != "" || m.Subject != nil || m.Config.Data != nil {
		t.Errorf("legacy manifest has %+v", m)
	}
}

func TestManifestRejects(t *testing.T) {
	_, subject := subjectImage(t)
	for name, stmts := range map[string][][]byte{
		"none":              nil,
		"not json":          {[]byte("nope")},
		"no predicate type": {[]byte(`{"_type":"https://in-toto.io/Statement/v1"}`)},
	} {
		if _, err := Manifest(subject, stmts...); err == nil {
			t.Errorf("Manifest(%s) succeeded", name)
		}
		if _, err := LegacyManifest(stmts...); err == nil {
			t.Errorf("LegacyManifest(%s) succeeded", name)
		}
	}
}

func TestDescriptor(t *testing.T) {
	_, subject := subjectImage(t)
	att, err := Manifest(subject, statements(t, subject.Digest)...)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Descriptor(att, subject.Digest)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := att.Digest()
	size, _ := att.Size()
	if d.Digest != h || d.Size != size || d.MediaType != types.OCIManifestSchema1 {
		t.Errorf("descriptor %+v does not describe the manifest (%s, %d)", d, h, size)
	}
	if d.Platform == nil || !d.Platform.Equals(v1.Platform{OS: "unknown", Architecture: "unknown"}) {
		t.Errorf("platform %+v, want unknown/unknown", d.Platform)
	}
	want := map[string]string{
		"vnd.docker.reference.type":   "attestation-manifest",
		"vnd.docker.reference.digest": subject.Digest.String(),
	}
	if len(d.Annotations) != len(want) {
		t.Errorf("annotations %v, want %v", d.Annotations, want)
	}
	for k, v := range want {
		if d.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, d.Annotations[k], v)
		}
	}
}

// TestPush pushes an index of an image and each form of its attestation
// manifest to a registry and reads them back, as a build with
// --provenance would.
func TestPush(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	img, subject := subjectImage(t)
	stmts := statements(t, subject.Digest)
	artifact, err := Manifest(subject, stmts...)
	if err != nil {
		t.Fatal(err)
	}
	legacy, err := LegacyManifest(stmts...)
	if err != nil {
		t.Fatal(err)
	}
	for form, att := range map[string]v1.Image{"artifact": artifact, "legacy": legacy} {
		t.Run(form, func(t *testing.T) {
			d, err := Descriptor(att, subject.Digest)
			if err != nil {
				t.Fatal(err)
			}
			idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
			idx = mutate.AppendManifests(idx,
				mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &amd64}},
				mutate.IndexAddendum{Add: att, Descriptor: d})
			ref, err := name.ParseReference(host + "/me/app:" + form)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.WriteIndex(ref, idx); err != nil {
				t.Fatal(err)
			}

			got, err := remote.Index(ref)
			if err != nil {
				t.Fatal(err)
			}
			im, err := got.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			if len(im.Manifests) != 2 {
				t.Fatalf("index has %d manifests, want 2", len(im.Manifests))
			}
			entry := im.Manifests[1]
			if entry.Annotations[AnnotationReferenceType] != ReferenceTypeAttestation || entry.Annotations[AnnotationReferenceDigest] != subject.Digest.String() {
				t.Errorf("index entry annotations %v", entry.Annotations)
			}
			back, err := got.Image(entry.Digest)
			if err != nil {
				t.Fatal(err)
			}
			checkLayers(t, back, stmts)
		})
	}
}

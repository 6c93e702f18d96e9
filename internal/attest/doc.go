// Package attest makes the SLSA provenance attestation that `docker buildx
// build --provenance` attaches to an image, in BuildKit's format, so tools
// that read BuildKit's attestations (buildx imagetools inspect, Docker
// Scout, policy engines) read kiln's the same way. It does no I/O: it turns
// a [Provenance] into in-toto statement bytes, and statements into the
// attestation manifest and the index entry that points at it.
//
// # What it mirrors
//
// The format is BuildKit v0.34.2's (the version in kiln's go.mod), read
// from its source rather than its documentation where the two disagree:
//
//   - solver/llbsolver/provenance/types: field names, omitempty, and the
//     field order encoding/json gives BuildKit's embedded structs
//     (resolvedDependencies before externalParameters; runDetails.metadata
//     "invocationId", not the documented "invocationID").
//   - solver/llbsolver/provenance.go: mode=min drops "build-arg:" and
//     "label:" args (and then records request completeness false), and
//     secrets and ssh; the documentation says min keeps args, the code
//     does not. The "platform" arg is host-specific and never recorded;
//     the result's platform goes to internalParameters.targetPlatform.
//   - provenance/capture.go: images sorted by reference, then git sources,
//     then HTTP sources, each sorted by URL; an image named by digest is
//     dropped when the same name and tag is also present; secrets and ssh
//     sorted by id, an ssh id "" recorded as "default".
//   - util/purl RefToPURL with packageurl-go v0.1.7's escaping (see
//     [ImagePURL]).
//   - exporter/attestation and exporter/containerimage/writer.go: the
//     statement's "_type" is https://in-toto.io/Statement/v1 for both
//     predicate versions (older BuildKit wrote v0.1; v0.34.2 does not),
//     subjects are one purl per image name, and the manifest layouts below.
//
// Times are written in UTC; BuildKit writes its host's local zone, the
// same instant.
//
// # What it leaves out
//
// kiln has no LLB, so mode=max lacks what BuildKit derives from it:
// internalParameters.buildConfig (the LLB definition) and
// buildkit_metadata.source and .layers (maps keyed by LLB step). Max
// therefore differs from min only in keeping build args, labels, secret
// ids and ssh ids.
//
// Also never written, as they describe BuildKit itself rather than the
// build: internalParameters.dockerfileVersion (the version of BuildKit's
// Dockerfile frontend) and request.compatibilityVersion (BuildKit's
// behaviour level, which v0.34.2 always writes, as 30). And never written
// because kiln has nothing to put there: request.inputs and request.root
// (gateway frontends), pkg:oci purls (oci-layout contexts),
// buildkit_metadata.network (BuildKit's HTTP proxy capture) and custom
// environment keys.
//
// # Attestation manifests
//
// BuildKit stores the statements of one platform image in an image
// manifest of their own, listed in the image index after the runnable
// manifests, with platform unknown/unknown and the annotations
// [Descriptor] sets. BuildKit v0.34.2 writes it as an OCI artifact by
// default ([Manifest]: artifactType, the empty config, a subject pointing
// at the image manifest); with the exporter option oci-artifact=false or a
// compatibility-version below 30 (BuildKit's CompatibilityVersion031), as
// an image whose config is a placeholder unknown/unknown image config
// ([LegacyManifest]), the only form older BuildKit releases write. Readers
// find attestations through the index annotations either way.
package attest

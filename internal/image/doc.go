// Package image turns filesystem changes into deterministic, compressed
// layer blobs and assembles them with a base image and a config file into an
// image (go-containerregistry v1 types).
//
// Layers are reproducible: the same tree and the same [LayerOptions] give the
// same bytes, so the same digest, on every machine. That is what lets a cache
// hit on one CI runner be reused bit-for-bit on another, and what makes
// SOURCE_DATE_EPOCH builds reproducible. To get there a layer tar has entries
// sorted by path, numeric owners only, no atime/ctime, mtimes truncated to
// seconds (and clamped to the epoch when one is given), and compressors
// whose headers carry no name or time.
//
// [LayerOptions].Level is buildx's compression-level; [Recompress] re-encodes
// an existing layer (buildx's force-compression), checking that its diffID
// is unchanged. Both go through one blob encoder. Owners come from
// internal/ownership, so an unprivileged build writes the owners a root
// build would.
//
// Pushing and the other outputs (OCI layout, docker archive) build on the
// v1.Image returned by [Assemble].
package image

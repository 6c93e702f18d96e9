// Package cache stores build step results under their cache keys: a local
// directory (kiln's always-on cache, and --cache-to/--cache-from
// type=local) and a registry (--cache-to/--cache-from type=registry, and
// images pushed with inline cache).
//
// # Promises
//
// A Store answers Get from metadata only: a cache hit costs a lookup and
// never downloads a layer. Layer returns a lazy v1.Layer whose Digest,
// DiffID, Size and MediaType come from the record; its bytes are fetched
// only when Compressed or Uncompressed is read, and a read fails with
// ErrDigestMismatch unless the bytes match the record's digest (and, for
// Uncompressed, its DiffID). A Writer never makes a record visible before
// the blob it names: Local writes blob then record, each atomically;
// Registry uploads blobs, then the index, and the manifest last.
//
// # Local directory format, version 1
//
// The format outlives any kiln release; change it only by raising
// FormatVersion, and keep reading version 1.
//
//	DIR/kiln-cache.json              {"format":"kiln-cache","version":1}, written last on creation
//	DIR/blobs/sha256/<hex>           compressed layer blobs, named by digest, never rewritten
//	DIR/records/sha256/<hex>.json    one record per step key (JSON below); its mtime is LastUsed
//	DIR/steps/<sha256(StepID) hex>   text: the key most recently Put for that StepID
//	DIR/tmp/                         temporary files; every write is temp + fsync + rename + dir fsync
//	DIR/lock                         flock: shared by builds (Lock, Put), exclusive by Prune
//
// A record file is
//
//	{"key":"sha256:…","layer":{"mediaType":"…","digest":"sha256:…","diffID":"sha256:…","size":N},
//	 "created":"RFC 3339","lastUsed":"RFC 3339","stepID":"…","inputs":{"name":"value"}}
//
// where "layer" is absent for a step that made no layer, and "lastUsed" is
// the time of the Put (the file's mtime, refreshed by Get hits, is what
// counts). A record whose blob is missing or of the wrong size is treated
// as absent (Get misses, List skips it, Prune deletes it), so neither a
// crash nor a hand-edited directory can make a hit that fails later.
// Several processes may use one directory at once: renames are atomic,
// the step index is last-writer-wins, and Prune waits for the shared locks
// builds hold.
//
// # Registry format, version 1
//
// The cache at REF is one OCI image manifest
// (application/vnd.oci.image.manifest.v1+json), so registries that refuse
// custom manifest types still store it, as with BuildKit's
// image-manifest=true caches. Its config descriptor has media type
// application/vnd.kiln.cache.index.v1+json and points at kiln's index:
//
//	{"version":1,"records":[<record as in a local record file>, …]}
//
// sorted by key. Its layers are the unique blobs the records name, sorted
// by digest. Records naming a blob the manifest does not list are ignored
// on load. Flush merges the index as loaded with the records Put since,
// drops records unused for longer than RegistryWriteOptions.MaxAge, keeps
// the MaxEntries most recently used, uploads the blobs the repository lacks
// and writes the manifest last, so a reader sees the old cache or the new
// one, never a manifest naming a missing blob.
//
// # Inline cache
//
// A REF whose config is an image config is read as a read-only cache from
// its top-level field
//
//	"kiln.cache.v1": {"version":1,"layers":[{"key":"sha256:…","index":N}, …]}
//
// where N indexes manifest.layers and rootfs.diff_ids. A record's Created is
// the N-th layer-making history entry's created time when history has one
// entry per layer, and the image's created time otherwise. An image without
// the field is an empty cache.
package cache

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
//	DIR/lock                         flock: shared by builds (Lock, Put); exclusive: no write in flight
//
// A record file is
//
//	{"key":"sha256:…","layer":{"mediaType":"…","digest":"sha256:…","diffID":"sha256:…","size":N},
//	 "created":"RFC 3339","lastUsed":"RFC 3339","stepID":"…","inputs":{"name":"value"}}
//
// where "layer" is absent for a step that made no layer, and "lastUsed" is
// the time of the Put (the file's mtime, refreshed by Get hits, is what
// counts). What is checked, and when: Get (a lookup) stats the blob, and a
// record whose blob is missing or of the wrong size is treated as absent
// (Get misses, List skips it, a collection deletes it), so a crash cannot make a
// hit. Get does not hash the blob: a hit costs a lookup. Every read of a
// blob hashes it (compressed bytes against the digest, uncompressed against
// the DiffID) and fails on a mismatch; when a read fails and the file no
// longer matches its digest (a bit flip on disk, a hand edit), the blob is
// removed and the error says so, so the next build misses those steps
// instead of failing on them again.
// Several processes may use one directory at once: renames are atomic and
// the step index is last-writer-wins.
//
// # Bounded, in kiln's directory
//
// A cache is trimmed by package gc (kiln's own, ROOT/cache, with the rest
// of kiln's directory), which never waits for a running build: GC lists one item per blob together with every record naming
// it (last used = the newest record's mtime), and one per record without a
// layer. A build's Local has a lease (SetLease): Get pins a hit's blob
// (BlobPin) before checking it is there, Put pins the blob before writing
// it, so a collection either sees the pin and keeps the blob or ran first
// and the lookup misses. Removing an item removes its records, the step
// index entries naming them, then the blob; the sweep after a collection
// removes records whose blob is gone, blobs no record names (unless
// pinned: a Put in flight), step index entries naming no record, and,
// when no build holds DIR/lock, temporary files. Superseded lists the
// diffIDs whose every record was replaced by a newer result of the same
// step (the step index names another key): their extracted forms are
// what a rebuild of a changed COPY would otherwise pile up. The image
// store hard-links blobs from BlobDir, so an image costs no second copy
// of a layer the cache holds.
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
// on load. Flush uploads the blobs the repository lacks, then merges the
// index as it is now with the records Put since, drops records unused for
// longer than Bounds.MaxAge, keeps the MaxEntries most
// recently used, and writes the manifest last, so a reader sees the old
// cache or the new one, never a manifest naming a missing blob. The
// bounds count and age units, not records: a record whose Inputs name,
// under RequiresInput, the records it needs (a cache mount's manifest and
// its packs) is kept or dropped with them, by its own last use, and a
// record requiring one the index lacks is dropped. Records naming a blob
// the repository lost (a HEAD by HasBlob, or a manifest PUT refused with
// MANIFEST_BLOB_UNKNOWN) are left out, so a lost blob never makes every
// later flush fail. Local collection groups records the same way.
//
// # Concurrent writers
//
// Several builds may flush to one REF at once (the jobs of one CI
// pipeline). Registries have no compare-and-swap on tags: a manifest PUT
// replaces whatever the tag named, and the distribution API offers no
// conditional PUT (If-Match) that registries honour. A plain
// read-modify-write therefore loses every record another writer put
// between our read and our write. Flush instead:
//
//  1. uploads its blobs first (HEAD before each PUT; mounts across
//     repositories), so the read-merge-write window below is a few small
//     requests long;
//  2. re-reads the index at REF and merges: the union of its records and
//     the staged ones (a staged record wins for its own key; keys cover
//     results, so another writer's record for the same key is as good),
//     within MaxAge and MaxEntries;
//  3. writes the index blob, then HEADs the manifest: if it changed since
//     step 2 read it, merges again (up to 5 times, then the round counts
//     as lost) rather than overwrite a newer index; otherwise PUTs the
//     manifest. No CAS makes HEAD-then-PUT
//     atomic, but it shrinks the window in which an update can be lost to
//     two requests;
//  4. waits a jittered settle time, longer than another writer's window
//     in steps 2-3 (150-300 ms, or twice as long as its own steps 2-3
//     took plus jitter, when the registry is slower), and reads the index
//     back;
//  5. is done when every staged record the bounds kept is in what it read
//     back; otherwise another writer replaced the index in between, and it
//     waits a random, growing backoff (up to 0.3 s, 0.6 s, 1.2 s, …, 5 s)
//     and repeats from step 2, up to 8 rounds, after which Flush fails;
//  6. when another writer showed itself during the flush (the index
//     changed before or after its write, or lost its records), checks once
//     more after a longer wait (1 s, or four times its write window), in
//     case a writer slowed down between its read and its write.
//
// Each write also carries every record the flush has seen in the index
// (at open, in each re-read and read-back), so a record that an overwrite
// dropped is restored by any writer that saw it and is still flushing.
//
// Every read of the index is bounded (30 s per attempt) and repeated after
// a transient failure (a body cut short or corrupted, caught by its digest;
// a reset; a timeout), up to 3 times; a round that fails on a transient
// error is repeated too, up to 3 times. Every step above is safe to repeat.
// A cached blob whose download breaks mid-body is fetched again and resumed
// where it broke (up to 3 times); its digest is checked over the whole
// stream either way.
//
// A writer whose records another writer overwrote therefore sees it and
// writes them again, merged with the other's. The scheme converges because
// each round only adds; the jitter keeps writers from repeating in lock
// step. Records leave the index only by the size and age bounds. It is
// timing-based: a writer stalled for longer than the others' settle times
// between its read and its write can still drop records (before step 6
// and the carried records, 60 concurrent builds on 2 cores lost some; not
// seen since); a registry with conditional PUTs would close that gap.
//
// On a local directory concurrent writers need no merge: each record is
// its own file, renamed into place, so every writer's records are kept
// (two records for one key: the last rename wins, and either is correct
// because keys cover results).
//
// A --cache-to directory takes the registry's bounds (SetBounds, the same
// keep, units and all): Flush, holding the directory's lock exclusively
// while Put holds it shared, removes the records keep drops, with the
// step index entries naming them, then every blob no remaining record
// names and that nobody wrote or hit for an hour (blobGrace). A writer
// that starts after it sees the blobs as they now are; one that ran
// before it finished its record first. A lookup that found a record just
// before the Flush removed it still reads its blob whole: the hit marked
// it used. Lingering blobs count toward the directory's size for at most
// one grace period, until the next Flush after it.
//
// # What the records are
//
// Most records are build steps, keyed by internal/cachekey. Two other kinds
// live beside them, ordinary records to every store (same format, same
// MaxAge/MaxEntries bounds and local collection), told apart by keys whose
// preimages no step key can have:
//
//   - cache-mount contents (RUN --mount=type=cache), content-addressed:
//     a manifest per mount (key sha256("kiln.cachemount.v2\x00" + id),
//     StepID "cache-mount|ID") and its packs (key
//     sha256("kiln.cachemount.pack.v1\x00" + pack digest), StepID
//     "cache-mount-pack|ID"); format in internal/mountstore;
//   - alternate encodings of base image layers: key
//     sha256("kiln alt-encoding v1 zstd " + diffID), StepID
//     "alt-encoding|zstd|DIFFID", the layer a zstd blob of exactly that
//     diffID. A mode=max export writes one for each gzip base layer of at
//     least 4 MiB that the build extracted; a later build extracts it in
//     place of the base's own blob (zstd decodes several times faster than
//     gzip) and checks the diffID as it does, falling back to the original
//     when it differs. Images never reference these blobs
//     (internal/solver/altlayers.go).
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

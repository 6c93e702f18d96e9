// Package mountstore keeps RUN --mount=type=cache contents in a build
// cache, content-addressed, so that saving a mount uploads what changed
// and restoring it downloads what is missing.
//
// # Format, version 1
//
// A mount is one manifest plus pack blobs. A pack is a zstd frame of
// chunks laid end to end; a chunk is a whole regular file below
// chunkMin bytes, or one content-defined piece of a larger file
// (github.com/restic/chunker with a fixed polynomial, so an edited or
// appended large file yields the same chunks around the edit). Chunks are
// named by the sha256 of their bytes; the manifest is zstd-compressed
// JSON:
//
//	{"version":1,
//	 "packs":[{"digest":"sha256:…","diffID":"sha256:…","size":N,"raw":N}, …],
//	 "entries":[{"path":".","type":"dir","mode":493,"uid":0,"gid":0,"mtime":NS}, …,
//	   {"path":"a/f","type":"file","mode":420,"size":N,"mtime":NS,"xattrs":{"user.k":"base64"},
//	    "chunks":[{"digest":"sha256:…","size":N,"pack":I,"offset":O}, …]},
//	   {"path":"a/l","type":"symlink","link":"f"},
//	   {"path":"a/h","type":"hardlink","link":"a/f"}]}
//
// where a pack's digest and size are of its compressed bytes, its diffID
// and raw of the uncompressed ones, and a chunk's offset is into the
// uncompressed pack. A save rewrites the chunks still used of a reused
// pack that is less than half used (compaction), so restores do not
// fetch dead bytes; the old pack's record then ages out of the store.
// Paths are slash-separated and relative to the mount; "." is the mount
// directory itself.
//
// # In a cache (internal/cache)
//
// Packs and manifests are ordinary records of the store the build's
// steps use, so a registry cache lists them as layers of its cache
// manifest and they share the index's age and size bounds and the local
// store's collection:
//
//   - a pack: key sha256("kiln.cachemount.pack.v1\x00" + pack digest),
//     StepID "cache-mount-pack|ID", its layer the pack;
//   - a manifest: key sha256("kiln.cachemount.v2\x00" + ID), StepID
//     "cache-mount|ID", its layer the manifest, Inputs["requires"] its
//     packs' keys, so the store's bounds keep or evict the mount whole.
//
// A restore first looks up every pack's record (CheckPacks: no download;
// a local store's lookup refreshes the pack's last use): a manifest whose
// packs the store no longer holds restores nothing, never a part.
//
// A save re-puts the records of the packs it reuses (refreshing their last
// use; no upload), puts the new packs, and puts the manifest last: a local
// store makes each record visible in that order, a registry writes its
// index after every blob. An interrupted save therefore leaves the
// previous manifest, whose packs it never removes; two saves of one mount
// each leave a manifest whose packs are present, and the later index wins.
// A base pack is reused only when its store still holds it (for a
// registry, a HEAD: an index can outlive a blob) and this build's restore
// read it whole; otherwise its chunks are packed again from the files, so
// a lost or damaged pack costs one upload, never a failed save or a
// manifest naming a missing pack.
//
// # Promises
//
// Restore writes only inside the mount directory (every path goes through
// internal/archive's Root, symlinks are scoped to it), writes a pack's
// chunks only once the whole pack has arrived and its digest (which fixes
// every chunk's bytes) has checked out, and fetches packs in parallel
// (bounded). A pack that cannot be fetched or fails its digest costs the
// files that needed it, which are left out (never written partially or
// wrongly) and reported; it never fails the restore. Files already present
// with the manifest's bytes are kept and not fetched. A mount's contents
// never enter an image or a step key: this package only moves them
// between a directory and a cache.
package mountstore

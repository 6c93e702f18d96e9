// Package gc counts and bounds everything kiln keeps in its directory.
//
// # What is counted
//
// [Measure] walks kiln's root as `du -s` does: allocated blocks, each
// inode once however many hard links name it, never descending into a
// mount. It splits the total per [Kind] by the top-level directory: cache
// (records and layer blobs), images (the local image store, whose layer
// blobs are hard links to cache blobs and count under cache), snapshots
// (extracted layers, committed trees, active snapshots), mounts (RUN
// --mount=type=cache) and other (locks, leases, run state). Directories a
// source declares immutable (extracted layers, committed trees) are walked
// once and remembered by name and inode in root/du-cache.json, so the
// measurement after every build walks what changed, not every extracted
// file.
//
// # What is removed
//
// Stores describe their content as [Item]s through a [Source]: a cache
// blob with every record naming it, an image, an extracted layer, a cache
// mount. [Collect] sorts all items of all sources by last use (file
// mtimes, touched on every hit) and removes, oldest first, what its
// [Policy] says: everything (All), what is older than Until, what is over
// MaxSize, and items a newer result superseded. A removal counts as freed
// only the blocks whose last link it removed ([Freer]), so dropping an
// image whose layers the cache still holds frees nothing, and the LRU goes
// on until the bytes are really gone. Stores remove an item out of its
// name first (rename, then delete), so a crash never leaves half an item
// under a usable name.
//
// # What is never removed
//
// A running build has its own directory, locked for its whole life
// (package state: ROOT/run/ID), and a [Lease] that records pins in it
// (blob digests, extracted layer ids). A build pins an item before it
// looks it up. Pins are written under root/gc.lock held shared; Collect
// holds it exclusively, asks which build directories are live (their lock
// is held), reads their pins and skips the pinned items. So an item is
// either pinned before a collection starts (kept) or looked up after it
// ended (found missing: a cache miss, or extracted again). A dead build's
// pins keep nothing; its directory goes with the next sweep. Items guarded
// by their own lock file (cache mounts, held while a RUN uses them) are
// removed only when Collect can take that lock exclusively.
package gc

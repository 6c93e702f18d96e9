// Package snapshot builds root filesystems from image layers.
//
// A [Snapshotter] prepares a writable view of a stage's layers for one
// filesystem-changing step (RUN, COPY, ADD, WORKDIR). It returns mounts as
// data ([Active.Mounts]); the solver mounts them (COPY) or hands them to an
// executor (RUN), and after unmounting asks [Active.Diff] what changed,
// which image.WriteLayer turns into a layer (image.Changes(ch) converts).
// Two snapshotters keep that contract, and one conformance suite checks
// both (conformance_test.go):
//
//   - overlay: each layer is extracted once per root into root/l/<short
//     diffID> in overlayfs form ([ApplyOverlay]: whiteouts as 0/0 character
//     devices, opaque directories as trusted.overlay.opaque=y), and a step
//     gets an overlay mount over them with a fresh upper dir under root/a
//     (or the dir given by WithActiveDir: kiln gives each build its own, so
//     a killed build's snapshots are removed with its other state).
//     A layer that appears more than once (every "RUN true" gives the same
//     empty layer) is a lower dir once, at its topmost place: overlayfs
//     refuses a repeated lowerdir, and the view is the same.
//     Diff reads only the upper dir. redirect_dir and metacopy are turned
//     off when the kernel accepts it, so the upper dir alone holds every
//     change (a renamed lower directory is copied up whole).
//   - copy: the fallback where overlay does not work. A snapshot is a full
//     merged tree ([Materialize]) under root/a, bind-mounted; Diff compares
//     two walks. Commit keeps the tree under root/c by layer chain, so the
//     next step of a stage takes it over by a rename instead of copying.
//
// The overlay snapshotter is also a [Prefetcher]: Prefetch gets layers
// into the layer store (pinned, fetchLimit at once) with no snapshot, so
// a later Prepare of them costs no fetch, and one arriving meanwhile
// waits for the extraction in flight; a cancelled Prefetch leaves only
// whole layers. The copy snapshotter has nothing to prefetch into.
//
// [New] picks by name; "auto" probes overlay once per root
// ([OverlaySupported]). Concurrent Prepares of one layer extract it once;
// a failed extraction is forgotten and retried by the next Prepare;
// extraction goes to a temporary directory in the active dir (the build's
// private state with WithActiveDir) renamed into place, so a crash never
// leaves a half layer in the shared store, and the sweep of a dead build's
// state removes its partial layers; nothing is fsynced: the rename is the
// commit.
//
// A layer streams from its blob (for a remote layer, the HTTP body: no
// temporary file) through internal/archive's decoders (klauspost's gzip,
// zstd), decompressed in a goroutine of its own up to a few MiB ahead of
// extraction, and up to fetchLimit layers of a Prepare at once. Both the
// compressed bytes and the tar are hashed on the way: a blob that does not
// match its digest or diffID fails with [ErrLayerDigest] and leaves no
// directory, and a cancelled extraction removes its temporary directory.
// A layer that is a [TarTee] also gets a copy of its tar as it is
// inflated (to encode it again without inflating twice), closed as whole
// only when the tar's diffID matched; a copy that falls behind is given up
// ([ErrTeeBehind]) after a bounded wait, never holding the extraction up
// for long. bench/extract.sh times this path against `curl | tar -xzf`.
//
// Extracted layers and committed trees are caches of layer blobs, not
// state: [Store] lists them for package gc, last used = the directory's
// mtime (touched by every Prepare that finds the layer), and gc evicts
// them least recently used first. [WithPin] has Prepare pin each layer
// ([LayerPin]) in the build's lease before looking it up, so nothing a
// running build mounts is evicted; an evicted layer is extracted again
// from its blob by the next Prepare. Eviction renames a directory out of
// its name before deleting it, so a half-deleted layer is never a lower.
//
// [Apply] extracts one uncompressed layer tar into a directory with OCI
// whiteout semantics, and [Materialize] stacks a whole image's layers into
// one merged tree.
//
// Extraction is hostile-input safe: no entry may create, change or link to
// anything outside the target directory. Names are made relative, ".."
// above the root is refused with [ErrUnsafePath] (wrapping
// archive.ErrEscapes), symlinks in the parents of an entry are resolved
// inside the target (as if it were chrooted, like containerd's RootPath and
// Docker's chroot extraction), and the last path component is never
// followed: an existing symlink there is replaced, not written through.
// Layers cannot set trusted.overlay.* xattrs. Parents are resolved through
// an archive.Root (open directory descriptors kept across entries), and
// Diff and the copy snapshotter's index walk with archive.Walk, so a tree
// nested thousands deep costs linear time and PATH_MAX does not apply.
// Device nodes follow archive's rule (created as root, skipped in a user
// namespace).
package snapshot

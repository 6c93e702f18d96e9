// Package snapshot builds root filesystems from image layers.
//
// This is the copying base every snapshotter shares: [Apply] extracts one
// uncompressed layer tar into a directory with OCI whiteout semantics, and
// [Materialize] stacks a whole image's layers into one merged tree. The
// overlayfs snapshotter (later) mounts layers instead of copying them, but
// still extracts each layer with Apply.
//
// Extraction is hostile-input safe: no entry may create, change or link to
// anything outside the target directory. Names are made relative, ".."
// above the root is refused with [ErrUnsafePath], symlinks in the parents of
// an entry are resolved inside the target (as if it were chrooted, like
// containerd's RootPath and Docker's chroot extraction), and the last path
// component is never followed: an existing symlink there is replaced, not
// written through.
package snapshot

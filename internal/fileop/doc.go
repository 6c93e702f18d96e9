// Package fileop applies Dockerfile file operations — COPY, ADD, heredoc
// files, WORKDIR's mkdir and --chown lookups — to a root filesystem directory
// on disk, with BuildKit's semantics.
//
// Safety is the point of the package: every path written is resolved with
// filepath-securejoin so symlinks inside the rootfs are followed but scoped
// to it, sources are resolved inside their Tree the same way, and sources
// that climb out are refused with ErrOutsideContext. ADD extracts archives
// through internal/archive: entries that climb out of the destination are
// refused with archive.ErrEscapes, archive.DefaultLimits apply unless
// Add.Limits says otherwise, and directories are resolved relative to open
// descriptors, so deep trees cost linear time.
//
// The functions return the rootfs-relative paths they created or modified so
// the snapshotter can build a layer from exactly those paths when overlayfs
// is not available.
package fileop

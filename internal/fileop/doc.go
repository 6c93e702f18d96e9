// Package fileop applies Dockerfile file operations — COPY, ADD, heredoc
// files, WORKDIR's mkdir and --chown lookups — to a root filesystem directory
// on disk, with BuildKit's semantics.
//
// Safety is the point of the package: every path written is resolved
// through an archive.Root, so symlinks inside the rootfs are followed but
// scoped to it (as filepath-securejoin does), sources are resolved inside
// their Tree the same way, and sources that climb out are refused with
// ErrOutsideContext. ADD extracts archives through internal/archive:
// entries that climb out of the destination are refused with
// archive.ErrEscapes, and archive.DefaultLimits apply unless Add.Limits
// says otherwise.
//
// Directories are resolved relative to open descriptors kept between
// operations, and a copied source tree is listed and read the same way, so
// a tree nested thousands deep costs linear time and PATH_MAX does not
// apply.
//
// A copied source directory is listed whole before anything is written, so
// an object that appears during the copy (the destination inside the
// source) is never copied, and nothing is copied twice.
//
// Owners are set through internal/ownership: where kiln may not chown (it
// runs unprivileged), the owner is recorded for the layer writer instead.
//
// The functions return the rootfs-relative paths they created or modified so
// the snapshotter can build a layer from exactly those paths when overlayfs
// is not available.
package fileop

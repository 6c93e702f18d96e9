// Package output sends a built image where the user asked for it, with
// buildx's -o/--output syntax: pushed to a registry, written as an OCI
// image layout (tar or directory), as a `docker load`-able tarball, loaded
// into a Docker engine, unpacked as a plain directory, or kept in kiln's
// local image store.
//
// Parse turns one --output value into a typed Spec at the CLI edge; Export
// does the I/O. Files and directories at Dest are replaced atomically (a
// sibling temporary is written, then renamed), so a failed export leaves
// nothing half-written behind.
package output

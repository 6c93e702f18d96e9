// Package archive is kiln's one home for reading and extracting tar
// archives: ADD's local archives (internal/fileop), image layers
// (internal/snapshot) and compressed layer blobs (internal/image) all read
// through it, so the safety rules and limits below cannot be missed by one
// copy.
//
//   - [Decompress] opens a stream compressed with gzip, bzip2, xz or zstd,
//     detected by magic bytes as BuildKit's ADD does; [OpenTar] also checks
//     that the content is a tar at all.
//   - [Clean] and [Join] make entry names relative and refuse any that climb
//     above the destination with [ErrEscapes] ("escapes the destination").
//   - [Root] resolves directories inside an extraction root through a chain
//     of open directory descriptors kept across entries: symlinks are
//     followed but scoped to the root (as filepath-securejoin does), and an
//     entry costs the components it does not share with the previous one,
//     so a path nested thousands of directories deep extracts in linear
//     time and is never limited by PATH_MAX.
//   - [Limits] bound what one archive may expand to; a [Meter] enforces
//     them while extracting (see below).
//   - [WriteSparse] writes a sparse tar entry with holes instead of zeros.
//   - The OCI whiteout names ([WhiteoutPrefix], [WhiteoutOpaque]) and
//     [ParseWhiteout] live here too.
//
// # Limits
//
// [DefaultLimits], which the build passes for every ADD of a local
// archive:
//
//   - MaxBytes, 16 GiB: the total apparent size of the files of one
//     archive (a sparse file counts its full length, since the layer made
//     from it holds every byte: tar writers, Go's included, do not write
//     sparse entries, and neither does BuildKit).
//   - MaxEntries, 1,048,576 entries.
//   - MaxRatio, 100: extracted bytes per archive byte read, checked only
//     once more than RatioAfter (64 MiB) has been extracted, so small
//     archives of zeros still work; a gzip or sparse bomb is refused after
//     64 MiB.
//
// # Sparse files
//
// An 8 GiB sparse file from a 10 KB tar is refused by the ratio limit after
// 64 MiB. A sparse file within the limits is written with holes where ADD
// extracts it ([WriteSparse]: st_blocks stay small), but the layer made from
// it holds every byte, as BuildKit's does (tar writers, Go's and BuildKit's,
// write no sparse entries; gzip shrinks the zeros about 1000 times), so a
// runner that extracts that layer writes the file in full, as containerd
// does. Writing holes there too would save disk but change nothing a user
// sees; it is left for later.
//
// An exceeded limit is an error wrapping [ErrLimit] that says which limit
// and by how much; the build prefixes the Dockerfile line. Image layers
// are not limited: they come from registries the user chose, and base
// images of tens of GiB exist.
//
// # Device nodes
//
// Character and block devices and FIFOs are created with mknod, with their
// major/minor numbers, mode and owner, as containerd's archive.Apply (image
// layers) and BuildKit's ADD (moby's archive.Untar) do when running as
// root; a failure is an error. In a user namespace, or when kiln is not
// root, devices are skipped, as both do in rootless mode ([SkipDevice]).
// FIFOs are always created. Layers kiln writes keep devices as tar
// entries, as BuildKit's differ does.
package archive

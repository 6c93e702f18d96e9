package image

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
	"github.com/kiln-build/kiln/internal/ownership"
)

// LayerOptions say how a layer blob is encoded and where it is written.
type LayerOptions struct {
	Compression Compression // "" means gzip
	// Level is buildx's compression-level: gzip 0-9 (0 stores), zstd
	// 0-22 (mapped to the encoder's four speeds, as BuildKit does); nil is
	// the library default.
	Level *int
	// OCI selects OCI layer media types; otherwise Docker schema2 ones
	// (zstd is always the OCI type, as in BuildKit).
	OCI bool
	// Epoch is SOURCE_DATE_EPOCH: every entry's mtime is clamped to at most
	// this, and whiteouts get exactly this mtime.
	Epoch *time.Time
	// Dir receives the blob file; the caller owns and removes it. "" means
	// os.TempDir().
	Dir string
}

// Changes says what a step changed, relative to the root directory
// (slash-separated paths, no leading slash).
type Changes struct {
	// Paths are created or modified paths, written from root. A directory
	// listed here is written as one entry; its children only if listed too.
	Paths []string
	// Deleted paths are written as OCI whiteouts ".wh.<name>".
	Deleted []string
	// Opaque directories hide all lower contents: "<dir>/.wh..wh..opq".
	Opaque []string
}

// ErrUnsafePath is returned for a change path that climbs out of the root
// with "..", or that lies under a symlink or file in root.
var ErrUnsafePath = errors.New("unsafe path")

// entry kinds in a layer plan
type entryKind int

const (
	fromRoot entryKind = iota // file, dir, ... read from root
	whiteout                  // ".wh.<name>" for a deleted path
	opaque                    // "<dir>/.wh..wh..opq"
)

// WriteLayer writes a deterministic tar of ch read from root, compresses it
// and stores it in a file in opts.Dir named after its digest.
//
// Entries are sorted by path; every parent directory of a listed path is
// written first with its metadata from root, as BuildKit's diff does, so the
// layer extracts the same on any lower filesystem. Owners are numeric, times
// are mtime only (truncated to seconds, clamped to opts.Epoch), and a file
// with several names inside the layer is written once and then as hardlinks.
// Extended attributes are not written.
func WriteLayer(ctx context.Context, root string, ch Changes, opts LayerOptions) (*Layer, error) {
	plan, err := planEntries(ch)
	if err != nil {
		return nil, err
	}
	fsRoot, err := archive.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	defer fsRoot.Close()
	l, err := writeBlob(opts, func(w io.Writer) error {
		tw := tar.NewWriter(w)
		lw := &layerWriter{root: fsRoot, tw: tw, epoch: opts.Epoch, links: map[fileID]string{}, dirs: map[string]bool{}}
		for _, e := range plan {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("write layer: %w", err)
			}
			if err := lw.write(e); err != nil {
				return err
			}
		}
		if err := tw.Close(); err != nil {
			return fmt.Errorf("finish layer tar: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	l.empty = len(plan) == 0
	return l, nil
}

// writeBlob compresses the tar stream fill writes into a blob file in
// opts.Dir named after its digest, hashing both sides as they pass: the
// one home of layer blob encoding, for new layers and recompressed ones.
func writeBlob(opts LayerOptions, fill func(tar io.Writer) error) (*Layer, error) {
	if opts.Compression == "" {
		opts.Compression = Gzip
	}
	mt, err := opts.Compression.mediaType(opts.OCI)
	if err != nil {
		return nil, err
	}
	dir := opts.Dir
	if dir == "" {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, "layer-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("create layer blob: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()

	// tar → diffID hash + compressor → digest hash + counter + file
	digester := sha256.New()
	counter := &countWriter{}
	buf := bufio.NewWriterSize(io.MultiWriter(f, digester, counter), 1<<20)
	comp, err := newCompressor(buf, opts.Compression, opts.Level)
	if err != nil {
		return nil, err
	}
	differ := sha256.New()
	if err := fill(io.MultiWriter(differ, comp)); err != nil {
		return nil, err
	}
	if err := comp.Close(); err != nil {
		return nil, fmt.Errorf("finish layer compression: %w", err)
	}
	if err := buf.Flush(); err != nil {
		return nil, fmt.Errorf("write layer blob: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("sync layer blob: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("close layer blob: %w", err)
	}
	digest := hashOf(digester)
	final := filepath.Join(dir, "sha256-"+digest.Hex)
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("store layer blob: %w", err)
	}
	ok = true
	return &Layer{
		path:        final,
		digest:      digest,
		diffID:      hashOf(differ),
		size:        counter.n,
		mediaType:   mt,
		compression: opts.Compression,
		level:       opts.Level,
	}, nil
}

type planned struct {
	name string // tar name without trailing slash
	kind entryKind
}

// planEntries expands ch into the sorted list of tar entries: the listed
// paths, their parents, whiteouts and opaque markers. Sorting the full
// slash-separated names puts every directory before its contents.
func planEntries(ch Changes) ([]planned, error) {
	kinds := map[string]entryKind{}
	// A name in kinds has all its parents there too, so the walk up stops
	// at the first one seen: a path nested 2000 deep costs linear time,
	// not a path.Dir of every ancestor for each of its 2000 parents.
	addParents := func(p string) {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := kinds[d]; ok {
				return
			}
			kinds[d] = fromRoot
		}
	}
	for _, p := range ch.Paths {
		c, err := cleanRel(p)
		if err != nil {
			return nil, err
		}
		if c == "." {
			continue // the root itself is never a layer entry
		}
		kinds[c] = fromRoot
		addParents(c)
	}
	for _, p := range ch.Deleted {
		c, err := cleanRel(p)
		if err != nil {
			return nil, err
		}
		if c == "." {
			return nil, fmt.Errorf("delete root: %w", ErrUnsafePath)
		}
		kinds[archive.WhiteoutName(c)] = whiteout
		addParents(c)
	}
	for _, p := range ch.Opaque {
		c, err := cleanRel(p)
		if err != nil {
			return nil, err
		}
		if c != "." {
			kinds[c] = fromRoot
			addParents(c)
		}
		kinds[archive.OpaqueName(c)] = opaque
	}
	plan := make([]planned, 0, len(kinds))
	for n, k := range kinds {
		plan = append(plan, planned{name: n, kind: k})
	}
	sort.Slice(plan, func(i, j int) bool { return plan[i].name < plan[j].name })
	return plan, nil
}

// cleanRel cleans a change path to a relative slash path, refusing any that
// would leave the root.
func cleanRel(p string) (string, error) {
	c := path.Clean(strings.TrimLeft(filepath.ToSlash(p), "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("change path %q: %w", p, ErrUnsafePath)
	}
	return c, nil
}

type fileID struct{ dev, ino uint64 }

type layerWriter struct {
	// root is read through descriptors, each entry relative to its open
	// parent (sorted entries share them): a tree nested thousands deep
	// costs linear time and is not limited by PATH_MAX.
	root  *archive.Root
	tw    *tar.Writer
	epoch *time.Time
	links map[fileID]string // first name written for a multiply-linked inode
	// dirs holds the names written as directories. Every parent is planned
	// and sorted before its children, so a parent missing here is a symlink
	// or file in root: reading through it could pull in files from outside
	// root (an absolute symlink resolves on the host).
	dirs map[string]bool
}

func (w *layerWriter) clamp(t time.Time) time.Time {
	// Truncate like containerd: without PAX sub-second records the tar
	// package would round, and with them layers would differ by filesystem.
	t = t.Truncate(time.Second)
	if w.epoch != nil && t.After(*w.epoch) {
		return w.epoch.Truncate(time.Second)
	}
	return t
}

func (w *layerWriter) write(e planned) error {
	if parent := path.Dir(e.name); parent != "." && !w.dirs[parent] {
		return fmt.Errorf("layer entry %s: parent is not a directory in root: %w", e.name, ErrUnsafePath)
	}
	switch e.kind {
	case whiteout, opaque:
		mtime := time.Unix(0, 0)
		if w.epoch != nil {
			mtime = w.epoch.Truncate(time.Second)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: e.name, ModTime: mtime, Format: tar.FormatPAX}
		if err := w.tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("write whiteout %s: %w", e.name, err)
		}
		return nil
	}
	dirfd, _, err := w.root.Dir(path.Dir(e.name), false)
	if err != nil {
		return fmt.Errorf("layer entry %s: %w", e.name, err)
	}
	base := path.Base(e.name)
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("layer entry %s: %w", e.name, err)
	}
	uid, gid := ownership.Of(dirfd, base, &st)
	hdr := &tar.Header{
		Name: e.name,
		Mode: tarMode(archive.StatMode(&st)),
		// The recorded owner: an unprivileged build cannot chown.
		Uid:     uid,
		Gid:     gid,
		ModTime: w.clamp(time.Unix(st.Mtim.Unix())),
		Format:  tar.FormatPAX,
	}
	content := false
	switch m := archive.StatMode(&st); {
	case m.IsDir():
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		w.dirs[e.name] = true
	case m.IsRegular():
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size
		if st.Nlink > 1 {
			id := fileID{uint64(st.Dev), st.Ino}
			if first, seen := w.links[id]; seen {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				hdr.Size = 0
				break
			}
			w.links[id] = e.name
		}
		content = true
	case m&os.ModeSymlink != 0:
		target, err := archive.Readlink(dirfd, base)
		if err != nil {
			return fmt.Errorf("layer entry %s: %w", e.name, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
	case m&os.ModeNamedPipe != 0:
		hdr.Typeflag = tar.TypeFifo
	case m&os.ModeDevice != 0:
		hdr.Typeflag = tar.TypeBlock
		if m&os.ModeCharDevice != 0 {
			hdr.Typeflag = tar.TypeChar
		}
		hdr.Devmajor = int64(unix.Major(uint64(st.Rdev)))
		hdr.Devminor = int64(unix.Minor(uint64(st.Rdev)))
	default:
		// Sockets cannot be stored in a tar; Docker skips them too.
		return nil
	}
	if err := fileCaps(hdr, dirfd, base); err != nil {
		return fmt.Errorf("layer entry %s: %w", e.name, err)
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write layer entry %s: %w", e.name, err)
	}
	if !content {
		return nil
	}
	return copyContent(w.tw, dirfd, base, e.name, hdr.Size)
}

// capsXattr holds a file's capabilities (setcap). It is the one extended
// attribute a layer records, as in BuildKit, whose layers are written by
// containerd's archive writer: every other xattr stays out of images.
const capsXattr = "security.capability"

// fileCaps adds base's capabilities, if it has any, to hdr as the PAX
// record containerd writes.
func fileCaps(hdr *tar.Header, dirfd int, base string) error {
	// A v3 capability (with a namespace root id) is 24 bytes.
	var buf [64]byte
	n, err := unix.Lgetxattr(archive.ProcPath(dirfd, base), capsXattr, buf[:])
	switch {
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
		return nil
	case err != nil:
		return fmt.Errorf("read %s: %w", capsXattr, err)
	case n == 0:
		return nil
	}
	if hdr.PAXRecords == nil {
		hdr.PAXRecords = map[string]string{}
	}
	hdr.PAXRecords["SCHILY.xattr."+capsXattr] = string(buf[:n])
	return nil
}

func copyContent(w io.Writer, dirfd int, base, name string, size int64) error {
	fd, err := unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open layer file %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("copy %s into layer: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("copy %s into layer: file shrank from %d to %d bytes while writing", name, size, n)
	}
	return nil
}

// tarMode is the tar header mode: permission bits plus setuid, setgid and
// sticky (the type lives in Typeflag).
func tarMode(m os.FileMode) int64 {
	mode := int64(m.Perm())
	if m&os.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

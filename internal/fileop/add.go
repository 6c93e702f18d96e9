package fileop

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
	"github.com/kiln-build/kiln/internal/ownership"
)

// ErrChecksum is returned when a downloaded file does not match Add.Checksum.
var ErrChecksum = errors.New("checksum mismatch")

// Add is ADD: like Copy, plus
//   - a local source that is a tar archive (plain, gzip, bzip2, xz or zstd,
//     detected by content like BuildKit) is extracted into Dest; entries that
//     escape Dest are refused (archive.ErrEscapes); ownership comes from the
//     archive unless Chown; Limits apply; sparse entries stay sparse;
//   - an http(s) URL source is downloaded to Dest/<basename of the URL path>
//     when Dest ends with "/", else to Dest, mode 0600 unless Chmod, mtime
//     from Last-Modified; Checksum ("sha256:<hex>") is verified when set.
//     A URL is extracted into Dest only with Unpack true (--unpack), and
//     a local archive is copied as it is with Unpack false, as BuildKit;
//   - a git URL is an error wrapping ErrNotSupported: the solver fetches
//     git sources itself (internal/gitsrc) and copies their trees.
type Add struct {
	Copy
	Checksum string
	// Unpack is --unpack: nil extracts local archives and not URLs.
	Unpack *bool
	Client *http.Client // nil = http.DefaultClient
	// Limits bound what one local archive may expand to; the zero value
	// means archive.DefaultLimits, so no caller runs unbounded by leaving
	// it out.
	Limits archive.Limits
}

// Apply performs the ADD into rootfs and returns the changed rootfs-relative
// paths, sorted.
func (op Add) Apply(ctx context.Context, rootfs string) ([]string, error) {
	var urls, local []string
	for _, s := range op.Sources {
		switch {
		case isGitURL(s):
			return nil, fmt.Errorf("ADD %s: git sources: %w", s, ErrNotSupported)
		case isHTTPURL(s):
			urls = append(urls, s)
		default:
			local = append(local, s)
		}
	}
	if op.Checksum != "" && len(local) > 0 {
		return nil, fmt.Errorf("ADD --checksum is only supported for http(s) sources, not %q: %w", local[0], ErrNotSupported)
	}
	if len(op.Sources) > 1 && !strings.HasSuffix(op.Dest, "/") {
		return nil, fmt.Errorf("add to %s: %w", op.Dest, ErrDestNotDir)
	}
	w, err := newWriter(rootfs)
	if err != nil {
		return nil, err
	}
	defer w.close()
	for _, u := range urls {
		if err := op.download(ctx, w, u); err != nil {
			return nil, err
		}
	}
	if len(local) > 0 {
		cp := op.Copy
		cp.Sources = local
		if len(op.Sources) > 1 {
			// the "/" check above already covered the mixed case
			cp.Dest = strings.TrimSuffix(op.Dest, "/") + "/"
		}
		hook := op.extractHook
		if op.Unpack != nil && !*op.Unpack {
			hook = nil
		}
		changed, err := cp.apply(ctx, rootfs, hook)
		if err != nil {
			return nil, err
		}
		for _, c := range changed {
			w.changed[c] = true
		}
	}
	return w.result(), nil
}

func isHTTPURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// isGitURL follows BuildKit's recognition of git remotes closely enough to
// refuse them instead of downloading an HTML page.
func isGitURL(s string) bool {
	if strings.HasPrefix(s, "git://") || strings.HasPrefix(s, "git@") || strings.HasPrefix(s, "ssh://") {
		return true
	}
	if !isHTTPURL(s) {
		return false
	}
	u, err := url.Parse(s)
	return err == nil && strings.HasSuffix(u.Path, ".git")
}

// extractHook extracts a local archive source into destDir. BuildKit
// extracts only when the content is a tar (optionally compressed); anything
// else is copied as a file.
func (op Add) extractHook(ctx context.Context, c *copier, it item, destDir string) (bool, error) {
	src := filepath.Join(c.op.Src.Root, filepath.FromSlash(it.resolved))
	f, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("ADD %s: %w", it.name, err)
	}
	defer f.Close()
	if err := c.op.Src.verifyFd(it.name, int(f.Fd())); err != nil {
		return false, err
	}
	meter := archive.NewMeter(op.limits())
	tr, dec, ok, err := archive.OpenTar(meter.Input(f))
	if err != nil || !ok {
		return false, err
	}
	defer dec.Close()
	if err := c.w.mkdirAll(ctx, path.Dir(destDir), c.op.Chown); err != nil {
		return false, err
	}
	if err := c.w.mkdirAll(ctx, destDir, c.op.Chown); err != nil {
		return false, err
	}
	if err := c.extract(ctx, tr, meter, destDir); err != nil {
		return false, fmt.Errorf("ADD %s: %w", it.name, err)
	}
	if err := c.op.Src.verifyFd(it.name, int(f.Fd())); err != nil {
		return false, err
	}
	return true, nil
}

func (op Add) limits() archive.Limits {
	if op.Limits == (archive.Limits{}) {
		return archive.DefaultLimits
	}
	return op.Limits
}

// unpackDownload extracts a downloaded file f into destDir when it is a
// tar archive (--unpack); otherwise it reports false with f rewound.
func (op Add) unpackDownload(ctx context.Context, w *writer, f *os.File, rawURL, destDir string) (bool, error) {
	meter := archive.NewMeter(op.limits())
	tr, dec, ok, err := archive.OpenTar(meter.Input(f))
	if err != nil || !ok {
		if _, serr := f.Seek(0, io.SeekStart); err == nil {
			err = serr
		}
		return false, err
	}
	defer dec.Close()
	if err := w.mkdirAll(ctx, destDir, op.Chown); err != nil {
		return false, err
	}
	c := newCopier(w, op.Copy)
	if err := c.extract(ctx, tr, meter, destDir); err != nil {
		return false, fmt.Errorf("ADD %s: %w", rawURL, err)
	}
	return true, nil
}

// extract writes every tar entry under the logical directory dest. Entry
// names are cleaned; a name or hardlink target that climbs above dest is
// refused with archive.ErrEscapes. Every directory is resolved through an
// archive.Root, inside the rootfs (a symlink planted by an earlier entry
// cannot redirect a later one outside it) and relative to the previous
// entry's open directories, so a deep tree costs linear time.
func (c *copier) extract(ctx context.Context, tr *tar.Reader, meter *archive.Meter, dest string) error {
	// The writer's root: one cache of descriptors, so no copy of it can
	// go stale while the other replaces entries.
	root, err := c.w.root()
	if err != nil {
		return err
	}
	owner := Owner{}
	if c.op.Chown != nil {
		owner = *c.op.Chown
	}
	root.Mkdir = archive.MkdirOptions{Mode: 0o755, UID: owner.UID, GID: owner.GID,
		Created: func(phys string) { c.w.changed[phys] = true }}
	x := &extractor{c: c, root: root}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		if err := meter.Entry(h); err != nil {
			return err
		}
		lp, err := archive.Join(dest, h.Name)
		if err != nil {
			return err
		}
		if lp == dest {
			if h.Typeflag != tar.TypeDir {
				return fmt.Errorf("archive entry %q is not a directory but names the destination", h.Name)
			}
			// The archive's root ("./") lands on the destination, which
			// exists by now: it keeps its own owner, mode and time, as
			// in BuildKit, whose unpacker skips a "." directory entry
			// onto an existing directory.
			continue
		}
		if err := x.entry(h, meter.Data(tr), lp, dest); err != nil {
			return fmt.Errorf("archive entry %q: %w", h.Name, err)
		}
	}
	// Directory mtimes last, deepest first, since children bump them.
	for i := len(x.dirs) - 1; i >= 0; i-- {
		fd, _, err := root.Dir(x.dirs[i].lp, false)
		if err != nil {
			return err
		}
		tv := unix.NsecToTimeval(x.dirs[i].t.UnixNano())
		if err := unix.Futimes(fd, []unix.Timeval{tv, tv}); err != nil {
			return fmt.Errorf("set mtime of /%s: %w", x.dirs[i].lp, err)
		}
	}
	return nil
}

type extractor struct {
	c    *copier
	root *archive.Root
	dirs []dirTime
}

type dirTime struct {
	lp string
	t  time.Time
}

func (x *extractor) entry(h *tar.Header, body io.Reader, lp, dest string) error {
	op := x.c.op
	m := meta{mode: h.FileInfo().Mode(), uid: h.Uid, gid: h.Gid, mtime: h.ModTime}
	for k, v := range h.PAXRecords {
		// trusted.overlay.* would steer the overlay the rootfs is.
		if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && !strings.HasPrefix(attr, "trusted.overlay.") {
			if m.xattrs == nil {
				m.xattrs = map[string]string{}
			}
			m.xattrs[attr] = v
		}
	}
	if op.Chown != nil {
		m.uid, m.gid = op.Chown.UID, op.Chown.GID
	}
	if op.Chmod != nil && h.Typeflag != tar.TypeSymlink {
		m.mode = op.Chmod.apply(m.mode)
	}
	if h.Typeflag == tar.TypeDir {
		return x.dir(lp, m, h.ModTime)
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeSymlink, tar.TypeLink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		// pax/GNU metadata entries are consumed by archive/tar; other
		// types (e.g. contiguous files) carry nothing we can represent.
		return nil
	}
	var src *linkSource
	if h.Typeflag == tar.TypeLink {
		target, err := archive.Join(dest, h.Linkname)
		if err != nil {
			return fmt.Errorf("hardlink target: %w", err)
		}
		if src, err = x.linkSource(target); err != nil {
			return err
		}
		defer unix.Close(src.fd)
	}
	// Parents missing from the archive are created like BuildKit does.
	parent, pphys, err := x.root.Dir(path.Dir(lp), true)
	if err != nil {
		return err
	}
	base := path.Base(lp)
	phys := path.Join(pphys, base)
	if cleared, err := x.clear(parent, base, path.Dir(lp)); err != nil {
		return err
	} else if cleared {
		// The removal dropped cached descriptors, perhaps parent's.
		if parent, _, err = x.root.Dir(path.Dir(lp), true); err != nil {
			return err
		}
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		err = writeFileAt(parent, base, body, archive.IsSparse(h))
	case tar.TypeSymlink:
		err = unix.Symlinkat(h.Linkname, parent, base)
		m.mode = fs.ModeSymlink
	case tar.TypeLink:
		// A hardlink shares its target's inode, metadata included.
		if err := unix.Linkat(src.fd, src.base, parent, base, 0); err != nil {
			return fmt.Errorf("link: %w", err)
		}
		x.c.w.changed[phys] = true
		return nil
	default:
		if archive.SkipDevice(h) {
			return nil
		}
		err = archive.Mknodat(parent, base, h, 0o600)
	}
	if err != nil {
		return err
	}
	x.c.w.changed[phys] = true
	return metaAt(parent, base, m)
}

// dir makes lp a directory (following a symlink to a directory inside the
// rootfs, so a merged-/usr "lib -> usr/lib" keeps working); its mtime is
// set after its children are written.
func (x *extractor) dir(lp string, m meta, mtime time.Time) error {
	if lp != "" {
		parent, _, err := x.root.Dir(path.Dir(lp), true)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		err = unix.Fstatat(parent, path.Base(lp), &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Mode&unix.S_IFMT != unix.S_IFLNK {
			if err := unix.Unlinkat(parent, path.Base(lp), 0); err != nil {
				return fmt.Errorf("replace with a directory: %w", err)
			}
			x.root.Invalidate(path.Dir(lp))
		}
	}
	fd, phys, err := x.root.Dir(lp, true)
	if err != nil {
		return err
	}
	if phys != "" {
		x.c.w.changed[phys] = true
	}
	if err := ownership.Fchownat(fd, ".", m.uid, m.gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, unixPerm(m.mode)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	x.dirs = append(x.dirs, dirTime{lp, mtime})
	return nil
}

// clear makes way for a new non-directory base in parent: a non-directory
// there is removed (cleared), a directory refused, as BuildKit does.
func (x *extractor) clear(parent int, base, dir string) (cleared bool, err error) {
	var st unix.Stat_t
	err = unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return false, nil
	case err != nil:
		return false, err
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return false, errors.New("cannot overwrite a directory with a non-directory")
	}
	if err := unix.Unlinkat(parent, base, 0); err != nil {
		return false, fmt.Errorf("replace: %w", err)
	}
	x.root.Invalidate(dir)
	return true, nil
}

type linkSource struct {
	fd   int // its own descriptor of the target's directory
	base string
}

// linkSource resolves a hardlink target (last component not followed:
// link(2) does not follow a symlink either).
func (x *extractor) linkSource(lp string) (*linkSource, error) {
	if lp == "" {
		return nil, errors.New("hardlink to the root")
	}
	fd, _, err := x.root.Dir(path.Dir(lp), false)
	if err != nil {
		return nil, fmt.Errorf("hardlink target: %w", err)
	}
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(dup)
	return &linkSource{fd: dup, base: path.Base(lp)}, nil
}

// writeFileAt creates base in dir with r's bytes; a sparse entry is
// written with holes.
func writeFileAt(dir int, base string, r io.Reader, sparse bool) error {
	fd, err := unix.Openat(dir, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	if sparse {
		_, err = archive.WriteSparse(f, r)
	} else {
		_, err = io.Copy(f, r)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, archive.ErrLimit) {
		return err // says what it is already
	}
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// metaAt sets owner, then mode (chown clears setuid bits), then mtime of
// base in dir, never following a symlink.
func metaAt(dir int, base string, m meta) error {
	if err := ownership.Fchownat(dir, base, m.uid, m.gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if m.mode&fs.ModeSymlink == 0 {
		if err := unix.Fchmodat(dir, base, unixPerm(m.mode), 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	for attr, v := range m.xattrs {
		// As BuildKit's unpacker: what the filesystem or the kernel
		// refuses is left out. A layer keeps only file capabilities.
		if err := unix.Lsetxattr(archive.ProcPath(dir, base), attr, []byte(v), 0); err != nil &&
			!errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("set xattr %s: %w", attr, err)
		}
	}
	ts := unix.NsecToTimespec(m.mtime.UnixNano())
	if err := unix.UtimesNanoAt(dir, base, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set mtime: %w", err)
	}
	return nil
}

// unixPerm is m's permission, setuid, setgid and sticky bits as chmod(2)
// takes them.
func unixPerm(m fs.FileMode) uint32 {
	out := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		out |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		out |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		out |= unix.S_ISVTX
	}
	return out
}

// download fetches one URL into the rootfs. The body is written to its final
// place only after the checksum matched.
func (op Add) download(ctx context.Context, w *writer, rawURL string) error {
	client := op.Client
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return fmt.Errorf("ADD %s: %w", rawURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("ADD %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return fmt.Errorf("ADD %s: unexpected status %s", rawURL, resp.Status)
	}
	tmp, err := os.CreateTemp("", "kiln-add-*")
	if err != nil {
		return fmt.Errorf("ADD %s: %w", rawURL, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), resp.Body); err != nil {
		return fmt.Errorf("ADD %s: download: %w", rawURL, err)
	}
	if op.Checksum != "" {
		algo, want, ok := strings.Cut(op.Checksum, ":")
		if !ok || algo != "sha256" {
			return fmt.Errorf("ADD --checksum=%s: only sha256:<hex> is supported: %w", op.Checksum, ErrNotSupported)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(want) {
			return fmt.Errorf("ADD %s: %w: got sha256:%s, want %s", rawURL, ErrChecksum, got, op.Checksum)
		}
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("ADD %s: %w", rawURL, err)
	}
	if op.Unpack != nil && *op.Unpack {
		if done, err := op.unpackDownload(ctx, w, tmp, rawURL, logical(op.Dest)); done || err != nil {
			return err
		}
	}

	dest := logical(op.Dest)
	if strings.HasSuffix(op.Dest, "/") || dest == "" {
		dest = path.Join(dest, urlFileName(rawURL, resp))
	}
	m := meta{mode: 0o600, mtime: time.Now()}
	if lm, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		m.mtime = lm
	}
	if op.Chown != nil {
		m.uid, m.gid = op.Chown.UID, op.Chown.GID
	}
	if op.Chmod != nil {
		m.mode = op.Chmod.apply(m.mode)
	}
	if err := w.mkdirAll(ctx, path.Dir(dest), op.Chown); err != nil {
		return err
	}
	return w.writeFile(dest, tmp, m)
}

// urlFileName is the base name of the URL path, falling back to the
// Content-Disposition filename and then "__unnamed__" as BuildKit does.
func urlFileName(rawURL string, resp *http.Response) string {
	if u, err := url.Parse(rawURL); err == nil {
		if b := path.Base(u.Path); b != "/" && b != "." && b != "" {
			return b
		}
	}
	if _, params, err := mime.ParseMediaType(resp.Header.Get("Content-Disposition")); err == nil {
		if fn := path.Base(filepath.ToSlash(params["filename"])); fn != "" && fn != "." && fn != "/" && fn != ".." {
			return fn
		}
	}
	return "__unnamed__"
}

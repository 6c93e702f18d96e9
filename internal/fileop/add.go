package fileop

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/ulikunitz/xz"
)

// ErrChecksum is returned when a downloaded file does not match Add.Checksum.
var ErrChecksum = errors.New("checksum mismatch")

// Add is ADD: like Copy, plus
//   - a local source that is a tar archive (plain, gzip, bzip2 or xz,
//     detected by content like BuildKit) is extracted into Dest; entries that
//     escape Dest are refused; ownership comes from the archive unless Chown;
//   - an http(s) URL source is downloaded to Dest/<basename of the URL path>
//     when Dest ends with "/", else to Dest, mode 0600 unless Chmod, mtime
//     from Last-Modified; Checksum ("sha256:<hex>") is verified when set.
//     URLs are never extracted;
//   - a git URL is an error wrapping ErrNotSupported.
type Add struct {
	Copy
	Checksum string
	Client   *http.Client // nil = http.DefaultClient
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
		changed, err := cp.apply(ctx, rootfs, extractHook)
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
func extractHook(ctx context.Context, c *copier, it item, destDir string) (bool, error) {
	src := filepath.Join(c.op.Src.Root, filepath.FromSlash(it.resolved))
	f, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("ADD %s: %w", it.name, err)
	}
	defer f.Close()
	tr, ok, err := openArchive(f)
	if err != nil || !ok {
		return false, err
	}
	if err := c.w.mkdirAll(ctx, path.Dir(destDir), c.op.Chown); err != nil {
		return false, err
	}
	if err := c.w.mkdirAll(ctx, destDir, c.op.Chown); err != nil {
		return false, err
	}
	if err := c.extract(ctx, tr, destDir); err != nil {
		return false, fmt.Errorf("ADD %s: %w", it.name, err)
	}
	return true, nil
}

// openArchive sniffs r and returns a tar reader when r is a tar archive,
// plain or compressed with gzip, bzip2 or xz.
func openArchive(r io.Reader) (*tar.Reader, bool, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(6)
	var dr io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, false, nil
		}
		dr = zr
	case bytes.HasPrefix(magic, []byte("BZh")):
		dr = bzip2.NewReader(br)
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		xr, err := xz.NewReader(br)
		if err != nil {
			return nil, false, nil
		}
		dr = xr
	}
	// A tar header block is 512 bytes with "ustar" at offset 257 (POSIX and
	// GNU); old v7 tars are not recognised, which BuildKit also misses.
	dbr := bufio.NewReaderSize(dr, 1024)
	hdr, err := dbr.Peek(512)
	if err != nil || !bytes.Equal(hdr[257:262], []byte("ustar")) {
		return nil, false, nil
	}
	return tar.NewReader(dbr), true, nil
}

// extract writes every tar entry under the logical directory dest. Entry
// names are cleaned; a name or hardlink target that climbs above dest is
// refused. Writes resolve through securejoin, so a symlink planted by an
// earlier entry cannot redirect a later one outside the rootfs.
func (c *copier) extract(ctx context.Context, tr *tar.Reader, dest string) error {
	type dirTime struct {
		lp string
		t  time.Time
	}
	var dirs []dirTime
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
		name, err := cleanSource(h.Name)
		if err != nil || (name == "" && h.Typeflag != tar.TypeDir) {
			return fmt.Errorf("archive entry %q: %w", h.Name, ErrOutsideContext)
		}
		lp := path.Join(dest, name)
		m := meta{mode: h.FileInfo().Mode(), uid: h.Uid, gid: h.Gid, mtime: h.ModTime, rdev: uint64(mkdev(h.Devmajor, h.Devminor))}
		if c.op.Chown != nil {
			m.uid, m.gid = c.op.Chown.UID, c.op.Chown.GID
		}
		if c.op.Chmod != nil && h.Typeflag != tar.TypeSymlink {
			m.mode = m.mode.Type() | fileMode(*c.op.Chmod)
		}
		// Parents missing from the archive are created like BuildKit does.
		if err := c.w.mkdirAll(ctx, path.Dir(lp), c.op.Chown); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if _, err := c.w.ensureDir(lp, m); err != nil {
				return err
			}
			dirs = append(dirs, dirTime{lp, h.ModTime})
		case tar.TypeReg, tar.TypeGNUSparse:
			if err := c.w.writeFile(lp, tr, m); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := c.w.writeSymlink(lp, h.Linkname, m); err != nil {
				return err
			}
		case tar.TypeLink:
			target, err := cleanSource(h.Linkname)
			if err != nil {
				return fmt.Errorf("archive hardlink %q -> %q: %w", h.Name, h.Linkname, ErrOutsideContext)
			}
			if err := c.hardlink(path.Join(dest, target), lp); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if err := c.w.writeSpecial(lp, m); err != nil {
				return err
			}
		default:
			// pax/GNU metadata entries are consumed by archive/tar; other
			// types (e.g. contiguous files) carry nothing we can represent.
		}
	}
	// Directory mtimes last, deepest first, since children bump them.
	for i := len(dirs) - 1; i >= 0; i-- {
		abs, err := c.w.resolve(dirs[i].lp, true)
		if err != nil {
			return err
		}
		if err := setMtime(abs, dirs[i].t); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) hardlink(targetLP, lp string) error {
	target, err := c.w.resolve(targetLP, false)
	if err != nil {
		return err
	}
	abs, err := c.w.resolve(lp, false)
	if err != nil {
		return err
	}
	if err := removeNonDir(abs); err != nil {
		return fmt.Errorf("link /%s: %w", lp, err)
	}
	if err := os.Link(target, abs); err != nil {
		return fmt.Errorf("link /%s: %w", lp, err)
	}
	c.w.mark(abs)
	return nil
}

func mkdev(major, minor int64) uint64 {
	return uint64(major&0xfff)<<8 | uint64(minor&0xff) | uint64(minor&^0xff)<<12
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
		m.mode = fileMode(*op.Chmod)
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

package mountstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
)

// PackSource is where Restore fetches packs from.
type PackSource interface {
	// OpenPack returns p's compressed bytes. The reader must verify them
	// against p.Digest: reaching EOF without an error means they are p's.
	// Restore reads a pack whole before it writes any of its bytes and
	// does not hash its chunks again (that was a third of its CPU): the
	// pack's digest, named by the manifest whose own digest the store
	// verified, already fixes every byte at every offset.
	OpenPack(ctx context.Context, p Pack) (io.ReadCloser, error)
}

// RestoreOptions tune Restore.
type RestoreOptions struct {
	// Parallel bounds the packs fetched at once (default 4).
	Parallel int
	// State is what the runner recorded of dir, if anything: files whose
	// stat matches are kept without being read.
	State *State
}

// RestoreResult says what Restore did.
type RestoreResult struct {
	// Files and Bytes are the regular files written from packs.
	Files int
	Bytes int64
	// Kept is the files (and KeptBytes their bytes) already in dir with
	// the manifest's contents, so not fetched.
	Kept      int
	KeptBytes int64
	// Fetched is the compressed bytes of the packs read.
	Fetched int64
	// Missing is the files left out because a pack they needed could not
	// be fetched or did not match its digests; Problems says why.
	Missing  int
	Problems []error
	// State is dir as restored, for the next Save.
	State *State
}

// Restore makes dir hold m: it fetches the packs holding chunks dir lacks,
// in parallel, and writes each pack's chunks once the whole pack has
// arrived and its digest has checked out. Every path stays inside dir. A pack that fails costs only the
// files that needed it (see RestoreResult.Missing); the error is for the
// local failures and cancellation that leave dir unusable.
func Restore(ctx context.Context, dir string, m *Manifest, src PackSource, o RestoreOptions) (RestoreResult, error) {
	if err := m.Validate(); err != nil {
		return RestoreResult{}, err
	}
	root, err := archive.OpenRoot(dir)
	if err != nil {
		return RestoreResult{}, err
	}
	defer root.Close()
	r := &restorer{root: root, m: m, files: map[int]*fileProgress{}, dir: dir}
	res := RestoreResult{State: &State{Files: map[string]FileState{}}}
	// Into an empty directory (a fresh runner), nothing is there to keep
	// or replace: no file is checked or removed first.
	if names, err := archive.ReadNames(root.FD()); err == nil && len(names) == 0 {
		r.fresh = true
		r.made = creation(root.FD())
	}
	// A directory with contents is laid out first, so what is kept is
	// judged where the manifest puts it; a fresh one while the first
	// packs download.
	if !r.fresh {
		if err := r.layout(); err != nil {
			return res, err
		}
	}
	// Which chunks are needed, from which packs, for which files.
	type target struct {
		entry  int
		offset int64
	}
	type piece struct {
		digest  digest.Digest
		off, sz int64
		targets []target
	}
	needs := map[int]map[int64]*piece{}
	var multi []int
	for i, e := range m.Entries {
		if e.Type != TypeFile {
			continue
		}
		if !r.fresh && r.present(i, o.State) {
			res.Kept++
			res.KeptBytes += e.Size
			continue
		}
		r.files[i] = &fileProgress{}
		if len(e.Chunks) > 1 {
			multi = append(multi, i)
		}
		var off int64
		for _, c := range e.Chunks {
			pm := needs[c.Pack]
			if pm == nil {
				pm = map[int64]*piece{}
				needs[c.Pack] = pm
			}
			p := pm[c.Offset]
			if p == nil {
				p = &piece{digest: c.Digest, off: c.Offset, sz: c.Size}
				pm[c.Offset] = p
			}
			if p.digest != c.Digest || p.sz != c.Size {
				return res, fmt.Errorf("%w: %s: two chunks at one place of pack %d", ErrBadManifest, e.Path, c.Pack)
			}
			p.targets = append(p.targets, target{entry: i, offset: off})
			off += c.Size
		}
	}
	packs := make([]int, 0, len(needs))
	for p := range needs {
		packs = append(packs, p)
	}
	sort.Ints(packs)

	type arrived struct {
		pack   int
		data   []byte
		pieces []*piece
		err    error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan arrived, 2)
	par := o.Parallel
	if par <= 0 {
		par = 4
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(maxPackRaw), zstd.WithDecoderConcurrency(par))
	if err != nil {
		return res, err
	}
	defer dec.Close()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(par)
	// Packs are decoded into buffers used again once written: a fresh
	// 8 MiB slice per pack costs as much in page faults and clearing as
	// the decoding itself.
	var bufs bufPool
	fetchedBy := make([]int64, len(packs))
	go func() {
		for i, pi := range packs {
			pieces := make([]*piece, 0, len(needs[pi]))
			for _, p := range needs[pi] {
				pieces = append(pieces, p)
			}
			sort.Slice(pieces, func(a, b int) bool { return pieces[a].off < pieces[b].off })
			g.Go(func() error {
				p := m.Packs[pi]
				data, n, err := fetchPack(gctx, src, dec, p, &bufs)
				fetchedBy[i] = n
				if err == nil {
					for _, pc := range pieces {
						if pc.off+pc.sz > int64(len(data)) {
							err = fmt.Errorf("pack %s: chunk %s past its end", p.Digest, pc.digest)
							break
						}
					}
				}
				select {
				case ch <- arrived{pack: pi, data: data, pieces: pieces, err: err}:
				case <-gctx.Done():
					bufs.put(data)
				}
				return nil
			})
		}
		g.Wait()
		close(ch)
	}()
	abandon := func(err error) (RestoreResult, error) {
		cancel()
		for a := range ch {
			bufs.put(a.data)
		}
		return res, err
	}
	if r.fresh {
		if err := r.layout(); err != nil {
			return abandon(err)
		}
	}
	// Files written by several packs, perhaps at once, are made before
	// the writers start, so that they only ever open them.
	for _, i := range multi {
		if err := r.create(root, i); err != nil {
			return abandon(err)
		}
	}
	// Creating files costs the filesystem more than anything else here:
	// par writers, each with its own Root, share it out.
	var (
		wmu  sync.Mutex
		werr error
		wg   sync.WaitGroup
	)
	roots := make([]*archive.Root, 0, par)
	for range par {
		wroot, err := archive.OpenRoot(dir)
		if err != nil {
			for _, r := range roots {
				r.Close()
			}
			return abandon(err)
		}
		roots = append(roots, wroot)
	}
	for _, wroot := range roots {
		wg.Go(func() {
			defer wroot.Close()
			for a := range ch {
				wmu.Lock()
				failed := werr != nil
				if a.err != nil && !failed {
					res.Problems = append(res.Problems, a.err)
				}
				wmu.Unlock()
				if failed || a.err != nil {
					bufs.put(a.data)
					continue
				}
				for _, pc := range a.pieces {
					for _, t := range pc.targets {
						if err := r.write(wroot, t.entry, t.offset, a.data[pc.off:pc.off+pc.sz]); err != nil {
							wmu.Lock()
							if werr == nil {
								werr = err
							}
							wmu.Unlock()
						}
					}
				}
				bufs.put(a.data)
			}
		})
	}
	wg.Wait()
	if werr == nil {
		werr = ctx.Err()
	}
	for _, n := range fetchedBy {
		res.Fetched += n
	}
	if werr != nil {
		return res, werr
	}
	files, bytes, missing, err := r.finish(res.State)
	res.Files, res.Bytes, res.Missing = files, bytes, missing
	return res, err
}

var errDigest = errors.New("digest mismatch")

// fetchPack reads and decompresses one pack, bounded in size, into a
// buffer of bufs.
func fetchPack(ctx context.Context, src PackSource, dec *zstd.Decoder, p Pack, bufs *bufPool) ([]byte, int64, error) {
	rc, err := src.OpenPack(ctx, p)
	if err != nil {
		return nil, 0, fmt.Errorf("pack %s: %w", p.Digest, err)
	}
	defer rc.Close()
	if p.Size > maxPackRaw {
		return nil, 0, fmt.Errorf("pack %s: %d bytes, more than a pack may hold", p.Digest, p.Size)
	}
	comp := bufs.get(p.Size)
	defer bufs.put(comp)
	n, err := io.ReadFull(rc, comp)
	if err == nil {
		// Read to the end: a store checks the blob's digest there (the
		// pack's own digest is its to check; what is written is checked
		// chunk by chunk anyway).
		var one [1]byte
		var m int
		if m, err = rc.Read(one[:]); m > 0 {
			err = fmt.Errorf("more than %d bytes: %w", p.Size, errDigest)
		} else if errors.Is(err, io.EOF) {
			err = nil
		}
	}
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("%d bytes, want %d: %w", n, p.Size, errDigest)
		}
		return nil, int64(n), fmt.Errorf("pack %s: %w", p.Digest, err)
	}
	data, err := dec.DecodeAll(comp, bufs.get(0))
	if err != nil {
		bufs.put(data)
		return nil, int64(n), fmt.Errorf("pack %s: %w", p.Digest, err)
	}
	return data, int64(n), nil
}

// bufPool holds byte slices for packs, compressed and decoded.
type bufPool struct{ p sync.Pool }

// get returns a slice of n bytes (of any capacity).
func (b *bufPool) get(n int64) []byte {
	if v, ok := b.p.Get().(*[]byte); ok && int64(cap(*v)) >= n {
		return (*v)[:n]
	}
	return make([]byte, n, max(n, packTarget+packTarget/8))
}

func (b *bufPool) put(s []byte) {
	if s != nil {
		s = s[:0]
		b.p.Put(&s)
	}
}

// fileProgress is one file being written. A file of one chunk is made,
// written and given its metadata by the writer that got the chunk (done,
// st); a larger one is made before the writers start and finished after.
type fileProgress struct {
	created bool
	written atomic.Int64
	done    bool
	st      unix.Stat_t
}

// restorer writes a manifest's entries under one Root. It is used by one
// goroutine.
type restorer struct {
	root  *archive.Root
	m     *Manifest
	files map[int]*fileProgress // files to be written, by entry index
	dir   string
	fresh bool // dir was empty
	// made is what a file created in a fresh dir gets by itself, so the
	// writers skip the chown and chmod that would not change it.
	made created
}

// created is the owner and mode bits a new file gets: the process's
// owner (when the mount directory does not pass its group down) and the
// mode asked for less the umask.
type created struct {
	known    bool
	uid, gid int
	umask    uint32
}

// creation reads what new files under the directory dirfd get. The umask
// comes from /proc (reading it with umask(2) would set it, racing other
// threads); without /proc nothing is known and every file gets its chown
// and chmod.
func creation(dirfd int) created {
	var st unix.Stat_t
	if unix.Fstat(dirfd, &st) != nil || st.Mode&unix.S_ISGID != 0 {
		return created{}
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return created{}
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			u, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return created{}
			}
			return created{known: true, uid: os.Geteuid(), gid: os.Getegid(), umask: uint32(u)}
		}
	}
	return created{}
}

func splitPath(p string) (dir, name string) {
	d, n := path.Split(p)
	if d == "" {
		return ".", n
	}
	return path.Clean(d), n
}

// layout makes the directories and symlinks, parents first.
func (r *restorer) layout() error {
	for _, e := range r.m.Entries {
		switch e.Type {
		case TypeDir:
			if _, _, err := r.root.Dir(e.Path, true); err != nil {
				return fmt.Errorf("cache mount dir %s: %w", e.Path, err)
			}
		case TypeSymlink:
			d, name := splitPath(e.Path)
			fd, _, err := r.root.Dir(d, true)
			if err != nil {
				return fmt.Errorf("cache mount symlink %s: %w", e.Path, err)
			}
			if err := clear(fd, name); err != nil {
				return fmt.Errorf("cache mount symlink %s: %w", e.Path, err)
			}
			if err := unix.Symlinkat(e.Link, fd, name); err != nil {
				return fmt.Errorf("cache mount symlink %s: %w", e.Path, err)
			}
			r.root.Invalidate(d)
		}
	}
	return nil
}

// clear removes a non-directory at name, if any.
func clear(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// present reports whether entry i is in dir already with its contents:
// by the runner's state, or else by reading it against its chunks.
func (r *restorer) present(i int, s *State) bool {
	e := r.m.Entries[i]
	d, name := splitPath(e.Path)
	fd, _, err := r.root.Dir(d, false)
	if err != nil {
		return false
	}
	var st unix.Stat_t
	if unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != e.Size {
		return false
	}
	if s != nil {
		if fs, ok := s.Files[e.Path]; ok && fs.matches(&st) && sameChunks(fs.Chunks, e.Chunks) {
			return true
		}
	}
	f, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(f)
	var off int64
	for _, c := range e.Chunks {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(fdReaderAt(f), off, c.Size)); err != nil {
			return false
		}
		if digest.NewDigest(digest.SHA256, h) != c.Digest {
			return false
		}
		off += c.Size
	}
	return true
}

func sameChunks(a []ChunkName, b []Chunk) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Digest != b[i].Digest || a[i].Size != b[i].Size {
			return false
		}
	}
	return true
}

type fdReaderAt int

func (f fdReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := unix.Pread(int(f), p, off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	if n < 0 {
		n = 0
	}
	return n, err
}

// create makes file entry i empty, replacing whatever was there.
func (r *restorer) create(root *archive.Root, i int) error {
	e := r.m.Entries[i]
	d, name := splitPath(e.Path)
	fd, _, err := root.Dir(d, true)
	if err != nil {
		return fmt.Errorf("cache mount file %s: %w", e.Path, err)
	}
	if !r.fresh {
		if err := clear(fd, name); err != nil {
			return fmt.Errorf("cache mount file %s: %w", e.Path, err)
		}
	}
	f, err := unix.Openat(fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("cache mount file %s: %w", e.Path, err)
	}
	r.files[i].created = true
	return unix.Close(f)
}

// write puts one verified chunk at its offset of file entry i. A file of
// one chunk is made here, whole, with its metadata.
func (r *restorer) write(root *archive.Root, i int, off int64, data []byte) error {
	e := r.m.Entries[i]
	fp := r.files[i]
	d, name := splitPath(e.Path)
	fd, _, err := root.Dir(d, true)
	if err != nil {
		return fmt.Errorf("cache mount file %s: %w", e.Path, err)
	}
	whole := len(e.Chunks) == 1
	flags := unix.O_WRONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	perm := uint32(0o600)
	if whole {
		if !r.fresh {
			if err := clear(fd, name); err != nil {
				return fmt.Errorf("cache mount file %s: %w", e.Path, err)
			}
		}
		flags |= unix.O_CREAT | unix.O_EXCL
		if r.made.known {
			perm = e.Mode & 0o777
		}
	}
	f, err := unix.Openat(fd, name, flags, perm)
	if err != nil {
		return fmt.Errorf("cache mount file %s: %w", e.Path, err)
	}
	defer unix.Close(f)
	if whole {
		fp.created = true
	}
	for len(data) > 0 {
		n, err := unix.Pwrite(f, data, off)
		if err != nil {
			return fmt.Errorf("cache mount file %s: %w", e.Path, err)
		}
		data, off = data[n:], off+int64(n)
		fp.written.Add(int64(n))
	}
	if whole {
		if err := fileMeta(f, e, r.made, &fp.st); err != nil {
			return err
		}
		fp.done = true
	}
	return nil
}

// fileMeta applies a regular file's owner, mode, xattrs and times through
// its open descriptor, and reads its stat back. made says what the file
// got when it was created (created with e.Mode's permission bits): a
// chown or chmod that would change nothing is not made.
func fileMeta(f int, e Entry, made created, st *unix.Stat_t) error {
	if !made.known || e.UID != made.uid || e.GID != made.gid {
		if err := unix.Fchown(f, e.UID, e.GID); err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("cache mount %s: chown: %w", e.Path, err)
		}
	}
	// Setuid, setgid and sticky bits are never given at creation (and a
	// chown drops the first two), so a mode with them is always set.
	if !made.known || e.Mode != e.Mode&0o777&^made.umask {
		if err := unix.Fchmod(f, e.Mode); err != nil {
			return fmt.Errorf("cache mount %s: chmod: %w", e.Path, err)
		}
	}
	for k, v := range e.Xattrs {
		_ = unix.Fsetxattr(f, k, v, 0) // best effort, as in meta
	}
	ts := []unix.Timespec{unix.NsecToTimespec(e.MTime), unix.NsecToTimespec(e.MTime)}
	if err := unix.UtimesNanoAt(f, "", ts, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("cache mount %s: times: %w", e.Path, err)
	}
	return unix.Fstat(f, st)
}

// finish removes files left incomplete, makes empty files and hardlinks,
// and applies metadata: files first, then directories deepest first so
// their times are the last thing written.
func (r *restorer) finish(s *State) (files int, bytes int64, missing int, err error) {
	complete := map[string]bool{}
	for i, e := range r.m.Entries {
		if e.Type != TypeFile {
			continue
		}
		fp, ok := r.files[i]
		if !ok { // kept
			complete[e.Path] = true
			continue
		}
		d, name := splitPath(e.Path)
		fd, _, err := r.root.Dir(d, true)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("cache mount file %s: %w", e.Path, err)
		}
		if fp.written.Load() != e.Size {
			if fp.created {
				if err := clear(fd, name); err != nil {
					return 0, 0, 0, fmt.Errorf("cache mount file %s: %w", e.Path, err)
				}
			}
			missing++
			continue
		}
		if !fp.created { // empty
			if err := clear(fd, name); err != nil {
				return 0, 0, 0, fmt.Errorf("cache mount file %s: %w", e.Path, err)
			}
			f, err := unix.Openat(fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
			if err != nil {
				return 0, 0, 0, fmt.Errorf("cache mount file %s: %w", e.Path, err)
			}
			unix.Close(f)
		}
		complete[e.Path] = true
		files++
		bytes += e.Size
	}
	for i, e := range r.m.Entries {
		switch e.Type {
		case TypeFile:
			if !complete[e.Path] {
				continue
			}
			var st unix.Stat_t
			if fp := r.files[i]; fp != nil && fp.done {
				st = fp.st
			} else if st, err = r.meta(e, false); err != nil {
				return 0, 0, 0, err
			}
			fs := statOf(&st)
			for _, c := range e.Chunks {
				fs.Chunks = append(fs.Chunks, ChunkName{Digest: c.Digest, Size: c.Size})
			}
			s.Files[e.Path] = fs
		case TypeSymlink:
			if _, err := r.meta(e, false); err != nil {
				return 0, 0, 0, err
			}
		case TypeHardlink:
			if !complete[e.Link] {
				missing++
				continue
			}
			if err := r.link(e); err != nil {
				return 0, 0, 0, err
			}
		}
	}
	for i := len(r.m.Entries) - 1; i >= 0; i-- {
		if e := r.m.Entries[i]; e.Type == TypeDir {
			// In a fresh directory, every directory below it was made by
			// the layout, as the Root's Mkdir options say.
			if _, err := r.meta(e, r.fresh && e.Path != "."); err != nil {
				return 0, 0, 0, err
			}
		}
	}
	return files, bytes, missing, nil
}

// link makes hardlink e to the file it names, inside the root.
func (r *restorer) link(e Entry) error {
	td, tname := splitPath(e.Link)
	tfd, _, err := r.root.Dir(td, false)
	if err != nil {
		return fmt.Errorf("cache mount hardlink %s: %w", e.Path, err)
	}
	dup, err := unix.Dup(tfd)
	if err != nil {
		return err
	}
	defer unix.Close(dup)
	d, name := splitPath(e.Path)
	fd, _, err := r.root.Dir(d, true)
	if err != nil {
		return fmt.Errorf("cache mount hardlink %s: %w", e.Path, err)
	}
	if err := clear(fd, name); err != nil {
		return fmt.Errorf("cache mount hardlink %s: %w", e.Path, err)
	}
	if err := unix.Linkat(dup, tname, fd, name, 0); err != nil {
		return fmt.Errorf("cache mount hardlink %s: %w", e.Path, err)
	}
	return nil
}

// meta applies e's owner, mode, xattrs and times through an O_PATH
// descriptor of the entry itself, so nothing is followed out of the root,
// and returns its stat after. made is a directory the Root created: its
// owner and mode are the Root's Mkdir options, set again only if e's
// differ, and its stat is not read again.
func (r *restorer) meta(e Entry, made bool) (unix.Stat_t, error) {
	var st unix.Stat_t
	d, name := splitPath(e.Path)
	var pfd int
	var err error
	if e.Path == "." {
		pfd, err = unix.Dup(r.root.FD())
	} else {
		var fd int
		if fd, _, err = r.root.Dir(d, false); err == nil {
			pfd, err = unix.Openat(fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
	}
	if err != nil {
		return st, fmt.Errorf("cache mount %s: %w", e.Path, err)
	}
	defer unix.Close(pfd)
	if err := unix.Fstat(pfd, &st); err != nil {
		return st, err
	}
	link := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if (e.Type == TypeSymlink) != link {
		// A later entry replaced this one (a hostile manifest naming a
		// path twice in two forms cannot pass Validate; this is a guard).
		return st, fmt.Errorf("cache mount %s: not a %s", e.Path, e.Type)
	}
	mk := r.root.Mkdir
	owned := made && e.UID == mk.UID && e.GID == mk.GID
	if owned {
		// Nothing to change.
	} else if err := unix.Fchownat(pfd, "", e.UID, e.GID, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EINVAL) {
		return st, fmt.Errorf("cache mount %s: chown: %w", e.Path, err)
	}
	proc := fmt.Sprintf("/proc/self/fd/%d", pfd)
	if !link && (!owned || e.Mode != mk.Mode || len(e.Xattrs) > 0) {
		if err := unix.Chmod(proc, e.Mode); err != nil {
			return st, fmt.Errorf("cache mount %s: chmod: %w", e.Path, err)
		}
		for k, v := range e.Xattrs {
			// Best effort, as for layers: a filesystem or namespace
			// may refuse some names.
			_ = unix.Setxattr(proc, k, v, 0)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(e.MTime), unix.NsecToTimespec(e.MTime)}
	if err := unix.UtimesNanoAt(pfd, "", ts, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		// Older kernels refuse AT_EMPTY_PATH here: go through the parent.
		if e.Path != "." {
			if fd, _, derr := r.root.Dir(d, false); derr == nil {
				err = unix.UtimesNanoAt(fd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
			}
		}
		if err != nil {
			return st, fmt.Errorf("cache mount %s: times: %w", e.Path, err)
		}
	}
	if made {
		return st, nil
	}
	if err := unix.Fstat(pfd, &st); err != nil {
		return st, err
	}
	return st, nil
}

package mountstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"github.com/restic/chunker"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
)

// Chunking. Files below chunkMin are one chunk; larger ones are cut by
// content between chunkMin and chunkMax. The polynomial is fixed forever:
// another one would cut the same bytes differently and share nothing.
const (
	chunkMin   = 512 << 10
	chunkMax   = 8 << 20
	polynomial = chunker.Pol(0x3DA3358B4DC173)
	// packTarget is the uncompressed size at which a pack is closed: big
	// enough that a mount of small files is a few requests, small enough
	// that a one-file change re-uploads little besides that file.
	packTarget = 8 << 20
)

// PackSink is where Save stores packs.
type PackSink interface {
	// HasPack reports whether the store holds p, a pack of the base
	// manifest; chunks of a pack it lacks are packed again.
	HasPack(ctx context.Context, p Pack) bool
	// KeepPack tells the store that the new manifest uses p, a pack of
	// the base (so its last use is refreshed). Nothing is uploaded.
	KeepPack(ctx context.Context, p Pack) error
	// PutPack stores a new pack.
	PutPack(ctx context.Context, p Pack, compressed []byte) error
}

// SaveOptions say what Save may reuse and how much it keeps.
type SaveOptions struct {
	// Base is the store's current manifest of this mount, or nil: its
	// chunks are referenced, not uploaded again.
	Base *Manifest
	// State is what the runner recorded of dir; files whose stat still
	// matches are not read. Nil: every file is read.
	State *State
	// MaxSize bounds the bytes of regular files the manifest keeps; the
	// least recently used (by the later of access and modification time)
	// are left out. 0 is no bound.
	MaxSize int64
}

// SaveResult is the manifest Save made and what it cost.
type SaveResult struct {
	Manifest *Manifest
	// State is dir as saved, for the next Save.
	State *State
	// Files and Bytes are the regular files the manifest holds.
	Files int
	Bytes int64
	// NewFiles and NewBytes are the files (and their bytes) at least part
	// of which had to be packed; Uploaded the compressed bytes of the new
	// packs, NewPacks their number.
	NewFiles int
	NewBytes int64
	Uploaded int64
	NewPacks int
	// Evicted is the files MaxSize left out, EvictedBytes their bytes.
	Evicted      int
	EvictedBytes int64
}

type saveItem struct {
	e    Entry
	st   unix.Stat_t
	used int64
}

// Save walks dir and stores it in sink: the chunks the base (in a pack
// the sink still has) already holds are referenced, the others packed and
// put. The manifest it returns is not stored: the caller stores it after
// Save returned, so a failed Save leaves the previous one.
func Save(ctx context.Context, dir string, sink PackSink, o SaveOptions) (SaveResult, error) {
	items, err := walkMount(ctx, dir)
	if err != nil {
		return SaveResult{}, err
	}
	var res SaveResult
	items, res.Evicted, res.EvictedBytes = evict(items, o.MaxSize)
	s := &saver{ctx: ctx, sink: sink, m: &Manifest{Version: Version}, base: o.Base,
		known: map[digest.Digest]Chunk{}, baseIdx: map[int]int{}, added: map[digest.Digest]Chunk{}, open: -1}
	if o.Base != nil {
		has, err := basePacks(ctx, sink, o.Base)
		if err != nil {
			return SaveResult{}, err
		}
		for _, e := range o.Base.Entries {
			for _, c := range e.Chunks {
				if has[c.Pack] {
					s.known[c.Digest] = c
				}
			}
		}
	}
	state := o.State
	if state == nil {
		state = &State{}
	}
	next := &State{Files: map[string]FileState{}}
	for _, it := range items {
		e := it.e
		if e.Type == TypeFile {
			fs, fresh, err := s.file(dir, &e, &it.st, state.Files[e.Path])
			if err != nil {
				return SaveResult{}, fmt.Errorf("cache mount file %s: %w", e.Path, err)
			}
			next.Files[e.Path] = fs
			res.Files++
			res.Bytes += e.Size
			if fresh > 0 {
				res.NewFiles++
				res.NewBytes += fresh
			}
		}
		s.m.Entries = append(s.m.Entries, e)
	}
	if err := s.compact(dir); err != nil {
		return SaveResult{}, err
	}
	if err := s.flush(); err != nil {
		return SaveResult{}, err
	}
	s.dropUnused()
	res.Manifest, res.State = s.m, next
	res.Uploaded, res.NewPacks = s.uploaded, s.newPacks
	return res, nil
}

// checkJobs bounds the pack checks (a HEAD each, for a registry) a save
// makes at once.
const checkJobs = 16

// basePacks asks the sink, in parallel, which of the base's packs that
// chunks name it still holds.
func basePacks(ctx context.Context, sink PackSink, base *Manifest) ([]bool, error) {
	named := make([]bool, len(base.Packs))
	for _, e := range base.Entries {
		for _, c := range e.Chunks {
			named[c.Pack] = true
		}
	}
	has := make([]bool, len(base.Packs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(checkJobs)
	for i, p := range base.Packs {
		if named[i] {
			g.Go(func() error {
				has[i] = sink.HasPack(gctx, p)
				return nil
			})
		}
	}
	_ = g.Wait()
	return has, ctx.Err()
}

// walkMount lists dir's directories, regular files and symlinks (other
// kinds are not cache content), parents first, with metadata and xattrs.
func walkMount(ctx context.Context, dir string) ([]saveItem, error) {
	var root unix.Stat_t
	if err := unix.Lstat(dir, &root); err != nil {
		return nil, fmt.Errorf("cache mount %s: %w", dir, err)
	}
	items := []saveItem{{e: Entry{Path: ".", Type: TypeDir, Mode: root.Mode & 0o7777, UID: int(root.Uid), GID: int(root.Gid), MTime: root.Mtim.Nano()}, st: root}}
	links := map[uint64]string{}
	err := archive.Walk(ctx, dir, func(w *archive.Entry) error {
		st := w.Stat
		e := Entry{Path: w.Rel, Mode: st.Mode & 0o7777, UID: int(st.Uid), GID: int(st.Gid), MTime: st.Mtim.Nano()}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.Type = TypeDir
		case unix.S_IFREG:
			e.Type, e.Size = TypeFile, st.Size
			if st.Nlink > 1 {
				if first, ok := links[st.Ino]; ok {
					items = append(items, saveItem{e: Entry{Path: w.Rel, Type: TypeHardlink, Link: first}})
					return nil
				}
				links[st.Ino] = w.Rel
			}
		case unix.S_IFLNK:
			t, err := archive.Readlink(w.Dir, w.Name)
			if err != nil {
				return err
			}
			e.Type, e.Link, e.Mode = TypeSymlink, t, 0
		default:
			return nil
		}
		if e.Type != TypeSymlink {
			x, err := readXattrs(archive.ProcPath(w.Dir, w.Name))
			if err != nil {
				return fmt.Errorf("%s: xattrs: %w", w.Rel, err)
			}
			e.Xattrs = x
		}
		items = append(items, saveItem{e: e, st: st, used: max(st.Atim.Nano(), st.Mtim.Nano())})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache mount %s: %w", dir, err)
	}
	return items, nil
}

// evict leaves out the least recently used regular files until the rest
// fit in maxSize. Hardlinked files stay (their links name them).
func evict(items []saveItem, maxSize int64) ([]saveItem, int, int64) {
	if maxSize <= 0 {
		return items, 0, 0
	}
	var total int64
	var files []int
	linked := map[string]bool{}
	for i, it := range items {
		switch it.e.Type {
		case TypeFile:
			total += it.e.Size
			files = append(files, i)
		case TypeHardlink:
			linked[it.e.Link] = true
		}
	}
	if total <= maxSize {
		return items, 0, 0
	}
	sort.SliceStable(files, func(a, b int) bool { return items[files[a]].used < items[files[b]].used })
	drop := map[int]bool{}
	var n int
	var freed int64
	for _, i := range files {
		if total <= maxSize {
			break
		}
		if linked[items[i].e.Path] {
			continue
		}
		drop[i] = true
		total -= items[i].e.Size
		n++
		freed += items[i].e.Size
	}
	kept := items[:0:0]
	for i, it := range items {
		if !drop[i] {
			kept = append(kept, it)
		}
	}
	return kept, n, freed
}

func readXattrs(p string) (map[string][]byte, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			err = nil
		}
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	var x map[string][]byte
	for _, name := range bytes.Split(buf[:sz], []byte{0}) {
		if len(name) == 0 {
			continue
		}
		n, err := unix.Lgetxattr(p, string(name), nil)
		if err != nil {
			continue
		}
		v := make([]byte, n)
		if n, err = unix.Lgetxattr(p, string(name), v); err != nil {
			continue
		}
		if x == nil {
			x = map[string][]byte{}
		}
		x[string(name)] = v[:n]
	}
	return x, nil
}

// saver builds one manifest: it places chunks, reusing the base's and
// packing new ones.
type saver struct {
	ctx     context.Context
	sink    PackSink
	m       *Manifest
	base    *Manifest
	known   map[digest.Digest]Chunk // base chunks, in base pack indexes
	baseIdx map[int]int             // base pack index -> new index
	added   map[digest.Digest]Chunk // chunks packed by this save
	buf     bytes.Buffer            // the open pack's bytes
	open    int                     // the open pack's index, -1: none
	enc     *zstd.Encoder

	uploaded int64
	newPacks int
}

// file fills e's chunks. It reads the file unless its stat matches the
// runner's state and every chunk the state names is placed already.
// fresh is the bytes that had to be packed.
func (s *saver) file(dir string, e *Entry, st *unix.Stat_t, prev FileState) (FileState, int64, error) {
	fs := statOf(st)
	if prev.matches(st) {
		chunks := make([]Chunk, 0, len(prev.Chunks))
		for _, n := range prev.Chunks {
			c, ok, err := s.place(n.Digest)
			if err != nil {
				return fs, 0, err
			}
			if !ok {
				break
			}
			chunks = append(chunks, c)
		}
		if len(chunks) == len(prev.Chunks) {
			e.Chunks = chunks
			fs.Chunks = prev.Chunks
			return fs, 0, nil
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(e.Path)), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fs, 0, err
	}
	defer f.Close()
	var fresh, size int64
	add := func(data []byte) error {
		d := digest.FromBytes(data)
		c, ok, err := s.place(d)
		if err != nil {
			return err
		}
		if !ok {
			if c, err = s.pack(d, data); err != nil {
				return err
			}
			fresh += int64(len(data))
		}
		e.Chunks = append(e.Chunks, c)
		fs.Chunks = append(fs.Chunks, ChunkName{Digest: d, Size: c.Size})
		size += c.Size
		return nil
	}
	if st.Size < chunkMin {
		data, err := io.ReadAll(io.LimitReader(f, chunkMin))
		if err != nil {
			return fs, 0, err
		}
		if len(data) > 0 {
			if err := add(data); err != nil {
				return fs, 0, err
			}
		}
	} else {
		ch := chunker.NewWithBoundaries(f, polynomial, chunkMin, chunkMax)
		buf := make([]byte, chunkMax)
		for {
			c, err := ch.Next(buf)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fs, 0, err
			}
			if err := add(c.Data); err != nil {
				return fs, 0, err
			}
		}
	}
	// A file that changed under the walk is saved as read.
	e.Size, fs.Size = size, size
	return fs, fresh, nil
}

// compactBelow is the live fraction under which a reused pack is
// rewritten: its chunks the manifest still uses are packed again (read
// from the mount) and the pack is no longer referenced, so a restore does
// not download mostly dead bytes and the store can age the pack out.
const compactBelow = 0.5

// compact re-packs the chunks of reused base packs that are mostly dead.
func (s *saver) compact(dir string) error {
	live := map[int]int64{}
	seen := map[digest.Digest]bool{}
	for _, e := range s.m.Entries {
		for _, c := range e.Chunks {
			if !seen[c.Digest] {
				seen[c.Digest] = true
				live[c.Pack] += c.Size
			}
		}
	}
	sparse := map[int]bool{}
	for _, idx := range s.baseIdx {
		if p := s.m.Packs[idx]; p.Raw > 0 && float64(live[idx]) < compactBelow*float64(p.Raw) {
			sparse[idx] = true
		}
	}
	if len(sparse) == 0 {
		return nil
	}
	moved := map[digest.Digest]Chunk{}
	for i := range s.m.Entries {
		e := &s.m.Entries[i]
		var off int64
		var f *os.File
		for j, c := range e.Chunks {
			if sparse[c.Pack] {
				if n, ok := moved[c.Digest]; ok {
					e.Chunks[j] = n
				} else {
					if f == nil {
						var err error
						if f, err = os.OpenFile(filepath.Join(dir, filepath.FromSlash(e.Path)), os.O_RDONLY|unix.O_NOFOLLOW, 0); err != nil {
							return fmt.Errorf("cache mount file %s: %w", e.Path, err)
						}
					}
					data := make([]byte, c.Size)
					if _, err := f.ReadAt(data, off); err != nil || digest.FromBytes(data) != c.Digest {
						// Changed under the save: keep the old pack.
						off += c.Size
						continue
					}
					n, err := s.pack(c.Digest, data)
					if err != nil {
						f.Close()
						return err
					}
					moved[c.Digest] = n
					e.Chunks[j] = n
				}
			}
			off += c.Size
		}
		if f != nil {
			f.Close()
		}
	}
	return nil
}

// dropUnused removes packs no chunk names (compacted away) and numbers the
// rest in the order the entries first name them. The order is canonical:
// a save of an unchanged mount then writes the very manifest it read, so
// nothing is uploaded, whichever order this save opened or reused its
// packs in (compaction appends packs that earlier entries name).
func (s *saver) dropUnused() {
	renum := make([]int, len(s.m.Packs))
	for i := range renum {
		renum[i] = -1
	}
	packs := make([]Pack, 0, len(s.m.Packs))
	for _, e := range s.m.Entries {
		for _, c := range e.Chunks {
			if renum[c.Pack] < 0 {
				renum[c.Pack] = len(packs)
				packs = append(packs, s.m.Packs[c.Pack])
			}
		}
	}
	for i := range s.m.Entries {
		for j := range s.m.Entries[i].Chunks {
			s.m.Entries[i].Chunks[j].Pack = renum[s.m.Entries[i].Chunks[j].Pack]
		}
	}
	s.m.Packs = packs
}

// place finds chunk d among the chunks this save packed or the base holds,
// as a chunk of the new manifest.
func (s *saver) place(d digest.Digest) (Chunk, bool, error) {
	if c, ok := s.added[d]; ok {
		return c, true, nil
	}
	c, ok := s.known[d]
	if !ok {
		return Chunk{}, false, nil
	}
	idx, ok := s.baseIdx[c.Pack]
	if !ok {
		p := s.base.Packs[c.Pack]
		if err := s.sink.KeepPack(s.ctx, p); err != nil {
			return Chunk{}, false, err
		}
		idx = len(s.m.Packs)
		s.m.Packs = append(s.m.Packs, p)
		s.baseIdx[c.Pack] = idx
	}
	c.Pack = idx
	return c, true, nil
}

// pack appends a new chunk to the open pack, closing it when full.
func (s *saver) pack(d digest.Digest, data []byte) (Chunk, error) {
	if s.open < 0 {
		s.open = len(s.m.Packs)
		s.m.Packs = append(s.m.Packs, Pack{})
	}
	c := Chunk{Digest: d, Size: int64(len(data)), Pack: s.open, Offset: int64(s.buf.Len())}
	s.buf.Write(data)
	s.added[d] = c
	if s.buf.Len() >= packTarget {
		return c, s.flush()
	}
	return c, nil
}

// flush compresses and puts the open pack.
func (s *saver) flush() error {
	if s.open < 0 {
		return nil
	}
	if s.enc == nil {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		s.enc = enc
	}
	raw := s.buf.Bytes()
	comp := s.enc.EncodeAll(raw, nil)
	p := Pack{Digest: digest.FromBytes(comp), DiffID: digest.FromBytes(raw), Size: int64(len(comp)), Raw: int64(len(raw))}
	if err := s.sink.PutPack(s.ctx, p, comp); err != nil {
		return fmt.Errorf("cache mount pack %s: %w", p.Digest, err)
	}
	s.m.Packs[s.open] = p
	s.uploaded += p.Size
	s.newPacks++
	s.open = -1
	s.buf.Reset()
	return nil
}

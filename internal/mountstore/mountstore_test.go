package mountstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/cache"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p string, data []byte, mode fs.FileMode) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, data, mode))
	must(t, os.Chmod(p, mode))
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	must(t, err)
	return b
}

// dump describes a tree as a user would compare it: every entry's type,
// mode, owner, size, contents, mtime, link target, xattrs, and which
// entries are one inode.
func dump(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	inodes := map[uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		var st unix.Stat_t
		must(t, unix.Lstat(p, &st))
		line := fmt.Sprintf("%s %o %d:%d", rel, st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			must(t, err)
			line += fmt.Sprintf(" size=%d sha=%x mtime=%d", len(b), sha256.Sum256(b), st.Mtim.Nano())
			if first, ok := inodes[st.Ino]; ok {
				line += " same-inode-as=" + first
			} else {
				inodes[st.Ino] = rel
			}
			if v, err := unixGetxattr(p, "user.k"); err == nil {
				line += " xattr=" + v
			}
		case unix.S_IFLNK:
			l, err := os.Readlink(p)
			must(t, err)
			line += " -> " + l
		case unix.S_IFDIR:
			line += fmt.Sprintf(" mtime=%d", st.Mtim.Nano())
		}
		lines = append(lines, line)
		return nil
	})
	must(t, err)
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func unixGetxattr(p, name string) (string, error) {
	b := make([]byte, 256)
	n, err := unix.Lgetxattr(p, name, b)
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// fixture makes a mount with every kind of entry kiln keeps.
func fixture(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "m")
	must(t, os.MkdirAll(dir, 0o750))
	for i := range 200 {
		write(t, filepath.Join(dir, "small", fmt.Sprintf("%02x", i%16), fmt.Sprintf("f%d", i)), random(t, 100+i*37), 0o644)
	}
	write(t, filepath.Join(dir, "big.bin"), random(t, 3<<20+12345), 0o600)
	write(t, filepath.Join(dir, "exe"), []byte("#!/bin/sh\n"), 0o4755)
	write(t, filepath.Join(dir, "empty"), nil, 0o640)
	must(t, os.MkdirAll(filepath.Join(dir, "empty-dir", "deeper"), 0o700))
	must(t, os.Symlink("big.bin", filepath.Join(dir, "link")))
	must(t, os.Symlink("/nowhere/at/all", filepath.Join(dir, "dangling")))
	must(t, os.Link(filepath.Join(dir, "exe"), filepath.Join(dir, "small", "hard")))
	owned := filepath.Join(dir, "owned")
	write(t, owned, []byte("mine"), 0o644)
	must(t, os.Lchown(owned, 1234, 5678))
	must(t, os.Lchown(filepath.Join(dir, "dangling"), 42, 43))
	must(t, os.Chown(filepath.Join(dir, "empty-dir"), 7, 8))
	if err := unix.Lsetxattr(owned, "user.k", []byte("v"), 0); err != nil {
		t.Logf("no user xattrs here: %v", err)
	}
	past := time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)
	must(t, os.Chtimes(filepath.Join(dir, "empty-dir"), past, past))
	must(t, os.Chtimes(filepath.Join(dir, "big.bin"), past, past))
	return dir
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (chown) and CI=true")
		}
		t.Skip("needs root")
	}
}

func store(t *testing.T) *cache.Local {
	l, err := cache.OpenLocal(filepath.Join(t.TempDir(), "cache"))
	must(t, err)
	return l
}

func save(t *testing.T, st cache.Writer, dir string, o SaveOptions) SaveResult {
	t.Helper()
	ctx := context.Background()
	if o.Base == nil {
		if m, _, err := Load(ctx, st, "id"); err == nil {
			o.Base = m
		}
	}
	sink := Sink{W: st, ID: "id"}
	res, err := Save(ctx, dir, sink, o)
	must(t, err)
	_, err = sink.Commit(ctx, res.Manifest)
	must(t, err)
	must(t, st.Flush(ctx))
	return res
}

func restore(t *testing.T, st cache.Store, dir string, o RestoreOptions) RestoreResult {
	t.Helper()
	ctx := context.Background()
	m, _, err := Load(ctx, st, "id")
	must(t, err)
	must(t, os.MkdirAll(dir, 0o700))
	res, err := Restore(ctx, dir, m, Source{Store: st}, o)
	must(t, err)
	return res
}

func TestRestoredTreeIsTheSavedTree(t *testing.T) {
	needRoot(t)
	src := fixture(t)
	st := store(t)
	want := dump(t, src)
	s := save(t, st, src, SaveOptions{})
	if s.NewPacks == 0 || s.Files != 204 {
		t.Fatalf("first save: %+v", s)
	}
	dst := filepath.Join(t.TempDir(), "r")
	r := restore(t, st, dst, RestoreOptions{})
	if r.Missing != 0 || len(r.Problems) != 0 || r.Files != 204 {
		t.Fatalf("restore: %+v", r)
	}
	if got := dump(t, dst); got != want {
		t.Errorf("restored tree differs\n got:\n%s\nwant:\n%s", got, want)
	}
}

func TestSmallChangeUploadsAboutTheChange(t *testing.T) {
	src := fixture(t)
	write(t, filepath.Join(src, "large.bin"), random(t, 24<<20), 0o644)
	st := store(t)
	first := save(t, st, src, SaveOptions{})
	// One small file changed, one added, the large file appended to.
	write(t, filepath.Join(src, "small", "00", "f0"), []byte("changed"), 0o644)
	write(t, filepath.Join(src, "new"), random(t, 5000), 0o644)
	f, err := os.OpenFile(filepath.Join(src, "large.bin"), os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	_, err = f.Write(random(t, 1000))
	must(t, err)
	must(t, f.Close())
	second := save(t, st, src, SaveOptions{State: first.State})
	// The append re-packs the large file's last chunk, whose size the
	// content-defined chunker picked (up to chunkMax), and compaction may
	// re-pack the live rest of the pack that chunk leaves mostly dead (under
	// compactBelow of it). Anything more is bytes a small change should not
	// move: the random data decides the sizes, so the bound is computed from
	// the first manifest rather than fixed.
	last, pack := lastChunk(t, first.Manifest, "large.bin")
	want := last + 1000 + int64(compactBelow*float64(pack)) + 64<<10
	if second.Uploaded > want || second.Uploaded*2 > first.Uploaded {
		t.Errorf("second save uploaded %d bytes (first %d, last chunk %d, its pack %d), want at most %d", second.Uploaded, first.Uploaded, last, pack, want)
	}
	if second.NewFiles != 3 {
		t.Errorf("second save packed %d files, want 3", second.NewFiles)
	}
	m, _, err := Load(context.Background(), st, "id")
	must(t, err)
	sink := Sink{W: st, ID: "id"}
	third, err := Save(context.Background(), src, sink, SaveOptions{Base: m, State: second.State})
	must(t, err)
	added, err := sink.Commit(context.Background(), third.Manifest)
	must(t, err)
	if third.Uploaded != 0 || third.NewFiles != 0 || added != 0 {
		t.Errorf("unchanged save uploaded %d bytes, %d files, a %d-byte manifest", third.Uploaded, third.NewFiles, added)
	}
	dst := filepath.Join(t.TempDir(), "r")
	restore(t, st, dst, RestoreOptions{})
	if got, want := dump(t, dst), dump(t, src); got != want {
		t.Errorf("restore after incremental saves differs\n got:\n%s\nwant:\n%s", got, want)
	}
}

// lastChunk returns the size of the last chunk of the file at path in m and
// the uncompressed size of the pack that holds it.
func lastChunk(t *testing.T, m *Manifest, path string) (size, pack int64) {
	t.Helper()
	for _, e := range m.Entries {
		if e.Path == path && len(e.Chunks) > 0 {
			c := e.Chunks[len(e.Chunks)-1]
			return c.Size, m.Packs[c.Pack].Raw
		}
	}
	t.Fatalf("%s has no chunks in the manifest", path)
	return 0, 0
}

// failingSink fails after n new packs, as an interrupted save would stop.
type failingSink struct {
	Sink
	n int
}

func (f *failingSink) PutPack(ctx context.Context, p Pack, b []byte) error {
	if f.n == 0 {
		return errors.New("interrupted")
	}
	f.n--
	return f.Sink.PutPack(ctx, p, b)
}

func TestInterruptedSaveLeavesThePreviousManifest(t *testing.T) {
	src := fixture(t)
	st := store(t)
	save(t, st, src, SaveOptions{})
	want := dump(t, src)
	write(t, filepath.Join(src, "more.bin"), random(t, 20<<20), 0o644)
	m, _, err := Load(context.Background(), st, "id")
	must(t, err)
	if _, err := Save(context.Background(), src, &failingSink{Sink: Sink{W: st, ID: "id"}, n: 1}, SaveOptions{Base: m}); err == nil {
		t.Fatal("save with a failing store succeeded")
	}
	dst := filepath.Join(t.TempDir(), "r")
	r := restore(t, st, dst, RestoreOptions{})
	if r.Missing != 0 {
		t.Fatalf("restore: %+v", r)
	}
	if got := dump(t, dst); got != want {
		t.Errorf("after an interrupted save the restore differs from the previous save")
	}
}

func TestConcurrentSavesLeaveAValidManifest(t *testing.T) {
	st := store(t)
	a, b := fixture(t), fixture(t)
	var wg sync.WaitGroup
	for _, d := range []string{a, b} {
		wg.Go(func() {
			sink := Sink{W: st, ID: "id"}
			res, err := Save(context.Background(), d, sink, SaveOptions{})
			if err == nil {
				_, err = sink.Commit(context.Background(), res.Manifest)
			}
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	dst := filepath.Join(t.TempDir(), "r")
	r := restore(t, st, dst, RestoreOptions{})
	got := dump(t, dst)
	if r.Missing != 0 || (got != dump(t, a) && got != dump(t, b)) {
		t.Errorf("after two concurrent saves the restore is neither tree (missing %d)", r.Missing)
	}
}

func TestDamagedPackCostsOnlyItsFiles(t *testing.T) {
	src := fixture(t)
	write(t, filepath.Join(src, "large.bin"), random(t, 20<<20), 0o644)
	st := store(t)
	save(t, st, src, SaveOptions{})
	m, _, err := Load(context.Background(), st, "id")
	must(t, err)
	if len(m.Packs) < 2 {
		t.Fatalf("fixture made %d packs, want several", len(m.Packs))
	}
	// Flip a byte of the first pack's blob.
	p := filepath.Join(st.Dir(), "blobs", "sha256", m.Packs[0].Digest.Encoded())
	b, err := os.ReadFile(p)
	must(t, err)
	b[len(b)/2] ^= 0xff
	must(t, os.WriteFile(p, b, 0o644))
	dst := filepath.Join(t.TempDir(), "r")
	must(t, os.MkdirAll(dst, 0o755))
	r, err := Restore(context.Background(), dst, m, Source{Store: st}, RestoreOptions{})
	must(t, err)
	if r.Missing == 0 || len(r.Problems) == 0 {
		t.Fatalf("damaged pack: %+v, want missing files and a problem", r)
	}
	// Every file restored has the saved bytes; the others are absent.
	for _, e := range m.Entries {
		if e.Type != TypeFile {
			continue
		}
		got, err := os.ReadFile(filepath.Join(dst, e.Path))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		must(t, err)
		want, err := os.ReadFile(filepath.Join(src, e.Path))
		must(t, err)
		if !bytes.Equal(got, want) {
			t.Errorf("%s restored with wrong bytes", e.Path)
		}
	}
}

type countingSource struct {
	Source
	mu sync.Mutex
	n  int
}

func (c *countingSource) OpenPack(ctx context.Context, p Pack) (io.ReadCloser, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.Source.OpenPack(ctx, p)
}

func TestRestoreKeepsFilesAlreadyPresent(t *testing.T) {
	src := fixture(t)
	st := store(t)
	save(t, st, src, SaveOptions{})
	dst := filepath.Join(t.TempDir(), "r")
	first := restore(t, st, dst, RestoreOptions{})
	m, _, err := Load(context.Background(), st, "id")
	must(t, err)
	for _, s := range []*State{first.State, nil} {
		cs := &countingSource{Source: Source{Store: st}}
		r, err := Restore(context.Background(), dst, m, cs, RestoreOptions{State: s})
		must(t, err)
		if cs.n != 0 || r.Fetched != 0 || r.Kept != 204 {
			t.Errorf("restore over the same files (state %v): fetched %d packs, kept %d", s != nil, cs.n, r.Kept)
		}
	}
	// One file changed locally: only its pack is fetched, and it is
	// put back.
	write(t, filepath.Join(dst, "small", "00", "f0"), []byte("local edit"), 0o644)
	cs := &countingSource{Source: Source{Store: st}}
	r, err := Restore(context.Background(), dst, m, cs, RestoreOptions{})
	must(t, err)
	if cs.n != 1 || r.Files != 1 {
		t.Errorf("one changed file: fetched %d packs, wrote %d files; want 1, 1", cs.n, r.Files)
	}
	if dump(t, dst) != dump(t, src) {
		t.Error("the changed file was not restored")
	}
}

func TestSizeCapDropsLeastRecentlyUsed(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "m")
	base := time.Now().Add(-time.Hour)
	for i := range 10 {
		p := filepath.Join(dir, fmt.Sprintf("f%d", i))
		write(t, p, random(t, 1000), 0o644)
		at := base.Add(time.Duration(i) * time.Minute)
		must(t, os.Chtimes(p, at, at))
	}
	// f0 is the oldest by mtime but was just read.
	must(t, os.Chtimes(filepath.Join(dir, "f0"), time.Now(), base))
	st := store(t)
	res := save(t, st, dir, SaveOptions{MaxSize: 5500})
	if res.Evicted != 5 || res.Bytes != 5000 {
		t.Fatalf("cap 5500 over 10x1000 bytes: %+v", res)
	}
	dst := filepath.Join(t.TempDir(), "r")
	restore(t, st, dst, RestoreOptions{})
	for i := range 10 {
		_, err := os.Stat(filepath.Join(dst, fmt.Sprintf("f%d", i)))
		kept := i == 0 || i >= 6
		if (err == nil) != kept {
			t.Errorf("f%d: present=%v, want %v", i, err == nil, kept)
		}
	}
}

func TestHostileManifestsStayInside(t *testing.T) {
	for _, p := range []string{"../x", "/abs", "a/../../x", "", "a//b"} {
		m := &Manifest{Version: Version, Entries: []Entry{{Path: p, Type: TypeDir}}}
		if err := m.Validate(); !errors.Is(err, ErrBadManifest) {
			t.Errorf("path %q: Validate = %v, want ErrBadManifest", p, err)
		}
	}
	if err := (&Manifest{Version: Version, Entries: []Entry{{Path: "h", Type: TypeHardlink, Link: "/etc/passwd"}}}).Validate(); !errors.Is(err, ErrBadManifest) {
		t.Errorf("hardlink outside: %v", err)
	}
	// Symlinks pointing out are followed only inside the mount.
	st := store(t)
	src := filepath.Join(t.TempDir(), "s")
	write(t, filepath.Join(src, "x"), []byte("payload"), 0o644)
	save(t, st, src, SaveOptions{})
	m, _, err := Load(context.Background(), st, "id")
	must(t, err)
	outside := t.TempDir()
	var file Entry
	for _, e := range m.Entries {
		if e.Type == TypeFile {
			file = e
		}
	}
	m.Entries = []Entry{
		{Path: ".", Type: TypeDir, Mode: 0o755},
		{Path: "esc", Type: TypeSymlink, Link: outside},
		{Path: "up", Type: TypeSymlink, Link: "../../../../../../" + outside},
	}
	for _, p := range []string{"esc/pwned", "up/pwned", "esc/sub/pwned"} {
		f := file
		f.Path = p
		m.Entries = append(m.Entries, f)
	}
	dst := filepath.Join(t.TempDir(), "r")
	must(t, os.MkdirAll(dst, 0o755))
	if _, err := Restore(context.Background(), dst, m, Source{Store: st}, RestoreOptions{}); err != nil {
		t.Logf("restore refused: %v", err)
	}
	des, err := os.ReadDir(outside)
	must(t, err)
	if len(des) != 0 {
		t.Errorf("restore wrote outside the mount: %v", des)
	}
}

// A branch's first save, its mount restored from main's cache, copies the
// packs it reuses from there instead of packing the mount again; the
// branch's cache then restores alone.
func TestSaveToAnotherStoreReusesTheBasePacks(t *testing.T) {
	src := fixture(t)
	main, branch := store(t), store(t)
	first := save(t, main, src, SaveOptions{})
	m, _, err := Load(context.Background(), main, "id")
	must(t, err)
	write(t, filepath.Join(src, "branch-only"), []byte("new"), 0o644)
	sink := Sink{W: branch, ID: "id", From: main}
	res, err := Save(context.Background(), src, sink, SaveOptions{Base: m, State: first.State})
	must(t, err)
	_, err = sink.Commit(context.Background(), res.Manifest)
	must(t, err)
	if res.NewFiles != 1 || res.Uploaded > 1<<10 {
		t.Errorf("branch save packed %d files, %d bytes; want the one new file", res.NewFiles, res.Uploaded)
	}
	dst := filepath.Join(t.TempDir(), "r")
	r := restore(t, branch, dst, RestoreOptions{})
	if r.Missing != 0 || dump(t, dst) != dump(t, src) {
		t.Errorf("the branch cache does not restore the tree alone (missing %d)", r.Missing)
	}
}

// A reused pack whose chunks the mount mostly dropped is rewritten: the
// new manifest no longer names it, so a restore does not fetch dead bytes.
func TestMostlyDeadPacksAreCompacted(t *testing.T) {
	src := fixture(t)
	st := store(t)
	first := save(t, st, src, SaveOptions{})
	old := first.Manifest.Packs
	must(t, os.Remove(filepath.Join(src, "big.bin")))
	must(t, os.Remove(filepath.Join(src, "link")))
	second := save(t, st, src, SaveOptions{State: first.State})
	for _, p := range second.Manifest.Packs {
		for _, o := range old {
			if p.Digest == o.Digest {
				t.Errorf("pack %s, now mostly dead, is still referenced", p.Digest)
			}
		}
	}
	if second.Uploaded == 0 || second.Uploaded > first.Uploaded/3 {
		t.Errorf("compaction uploaded %d bytes (first save %d)", second.Uploaded, first.Uploaded)
	}
	dst := filepath.Join(t.TempDir(), "r")
	r := restore(t, st, dst, RestoreOptions{})
	if r.Missing != 0 || dump(t, dst) != dump(t, src) {
		t.Errorf("after compaction the restore differs (missing %d)", r.Missing)
	}
	if r.Fetched > second.Uploaded+1<<10 {
		t.Errorf("restore fetched %d bytes, more than the live packs (%d)", r.Fetched, second.Uploaded)
	}
	// A pack still mostly live is kept as it is.
	write(t, filepath.Join(src, "one-more"), []byte("x"), 0o644)
	third := save(t, st, src, SaveOptions{State: second.State})
	if third.Uploaded > 1<<10 {
		t.Errorf("a one-file change after compaction uploaded %d bytes", third.Uploaded)
	}
}

// A pack the restore could not read whole (damaged on disk: the local
// store drops it) is not reused by the save after it: the files it held,
// which the runner has again, are packed anew, the sink is told, and the
// next restore gets every file. Packed anew, the same chunks make the
// same pack, so the manifest may name it again: it is whole now.
func TestUnreadablePackIsPackedAgain(t *testing.T) {
	ctx := context.Background()
	src := fixture(t)
	st := store(t)
	first := save(t, st, src, SaveOptions{})
	m, _, err := Load(ctx, st, "id")
	must(t, err)
	bad := m.Packs[0]
	p := filepath.Join(st.BlobDir(), bad.Digest.Encoded())
	data, err := os.ReadFile(p)
	must(t, err)
	data[len(data)/2] ^= 0xff
	must(t, os.WriteFile(p, data, 0o644))

	u := &Unreadable{}
	dst := filepath.Join(t.TempDir(), "r")
	must(t, os.MkdirAll(dst, 0o700))
	r, err := Restore(ctx, dst, m, Source{Store: st, Unreadable: u}, RestoreOptions{})
	must(t, err)
	if r.Missing == 0 || !u.Has(bad.Digest) {
		t.Fatalf("restore through a damaged pack: missing %d, unreadable noted %v", r.Missing, u.Has(bad.Digest))
	}
	var lost []digest.Digest
	var mu sync.Mutex
	sink := Sink{W: st, ID: "id", Unreadable: u, Lost: func(p Pack, why string) {
		mu.Lock()
		defer mu.Unlock()
		lost = append(lost, p.Digest)
	}}
	second, err := Save(ctx, src, sink, SaveOptions{Base: m, State: first.State})
	must(t, err)
	_, err = sink.Commit(ctx, second.Manifest)
	must(t, err)
	if len(lost) != 1 || lost[0] != bad.Digest || second.NewPacks == 0 {
		t.Errorf("save after a damaged pack: told of %v (want %s), %d new packs", lost, bad.Digest, second.NewPacks)
	}
	again := filepath.Join(t.TempDir(), "r2")
	r = restore(t, st, again, RestoreOptions{})
	if r.Missing != 0 {
		t.Errorf("restore of the new manifest left out %d files: %v", r.Missing, r.Problems)
	}
	if got, want := dump(t, again), dump(t, src); got != want {
		t.Errorf("restored tree differs\n got:\n%s\nwant:\n%s", got, want)
	}
}

// A compaction moves an entry's chunks into a pack opened after the packs
// later entries name; the manifest still numbers its packs in the order
// the entries name them, so the next save of the unchanged mount writes
// the very same manifest and uploads nothing (a flake in CI once, when
// the random data of TestSmallChangeUploadsAboutTheChange compacted).
func TestUnchangedSaveAfterCompactionUploadsNothing(t *testing.T) {
	src := filepath.Join(t.TempDir(), "m")
	write(t, filepath.Join(src, "a"), random(t, 1000), 0o644)
	write(t, filepath.Join(src, "dead"), random(t, 7<<20), 0o644)
	st := store(t)
	first := save(t, st, src, SaveOptions{})
	// A second pack, named by entries after "a".
	write(t, filepath.Join(src, "b"), random(t, 1000), 0o644)
	write(t, filepath.Join(src, "more"), random(t, 7<<20), 0o644)
	second := save(t, st, src, SaveOptions{State: first.State})
	// "a"'s pack is now mostly dead: "a" is packed again, into a pack
	// opened after the one "b" uses.
	must(t, os.Remove(filepath.Join(src, "dead")))
	third := save(t, st, src, SaveOptions{State: second.State})
	if third.Uploaded == 0 {
		t.Fatalf("the save after dropping most of a pack compacted nothing")
	}
	m, _, err := Load(context.Background(), st, "id")
	must(t, err)
	sink := Sink{W: st, ID: "id"}
	same, err := Save(context.Background(), src, sink, SaveOptions{Base: m, State: third.State})
	must(t, err)
	added, err := sink.Commit(context.Background(), same.Manifest)
	must(t, err)
	if added != 0 || same.Uploaded != 0 {
		t.Errorf("an unchanged save after compaction uploaded %d bytes and a %d-byte manifest", same.Uploaded, added)
	}
}

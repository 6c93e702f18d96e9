package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/gc"
	"github.com/kiln-build/kiln/internal/ioctx"
)

// Local is the cache in a local directory; see doc.go for its layout. It
// is safe for concurrent use by goroutines and by several processes.
type Local struct {
	dir string
	// now is the clock for LastUsed; tests replace it.
	now func() time.Time
	// lease, when set, pins the blobs Get and Put use (see SetLease).
	lease *gc.Lease
	// bounds are what Flush keeps (see SetBounds).
	bounds Bounds
	// readOnly: lookups leave LastUsed as it was and Put fails (see
	// SetReadOnly).
	readOnly bool
}

// SetReadOnly makes the store one that is only looked at: Get no longer
// refreshes LastUsed, and Put fails with ErrReadOnly. A dry run reads
// kiln's cache this way so that it changes nothing on disk.
func (l *Local) SetReadOnly() { l.readOnly = true }

// marker is the content of the format marker file, kiln-cache.json.
type marker struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
}

const (
	markerName   = "kiln-cache.json"
	markerFormat = "kiln-cache"
)

// OpenLocal opens the cache in dir, creating it when missing. A directory
// written by a newer kiln (a higher format version) is refused with
// ErrUnsupportedFormat rather than misread.
func OpenLocal(dir string) (*Local, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local cache %s: %w", dir, err)
	}
	l := &Local{dir: abs, now: time.Now}
	b, err := os.ReadFile(filepath.Join(abs, markerName))
	switch {
	case err == nil:
		var m marker
		if err := json.Unmarshal(b, &m); err != nil || m.Format != markerFormat {
			return nil, fmt.Errorf("local cache %s: %s is not a kiln cache marker: %w", abs, markerName, ErrUnsupportedFormat)
		}
		if m.Version > FormatVersion || m.Version < 1 {
			return nil, fmt.Errorf("local cache %s: format version %d, this kiln reads %d: %w", abs, m.Version, FormatVersion, ErrUnsupportedFormat)
		}
	case errors.Is(err, fs.ErrNotExist):
		// New cache: the directories first, the marker last, so a marker
		// always means a complete layout.
	default:
		return nil, fmt.Errorf("local cache %s: %w", abs, err)
	}
	for _, d := range []string{"blobs/sha256", "records/sha256", "steps", "tmp"} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("local cache %s: %w", abs, err)
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		mb, _ := json.Marshal(marker{Format: markerFormat, Version: FormatVersion})
		if err := l.writeFile(filepath.Join(abs, markerName), func(w io.Writer) error {
			_, err := w.Write(append(mb, '\n'))
			return err
		}); err != nil {
			return nil, fmt.Errorf("local cache %s: %w", abs, err)
		}
	}
	return l, nil
}

// Dir returns the cache's directory.
func (l *Local) Dir() string { return l.dir }

func (l *Local) String() string { return "local:" + l.dir }

func (l *Local) blobPath(h v1.Hash) string {
	return filepath.Join(l.dir, "blobs", "sha256", h.Hex)
}

func (l *Local) recordPath(key digest.Digest) string {
	return filepath.Join(l.dir, "records", "sha256", key.Encoded()+".json")
}

func (l *Local) stepPath(stepID string) string {
	sum := sha256.Sum256([]byte(stepID))
	return filepath.Join(l.dir, "steps", hex.EncodeToString(sum[:]))
}

// Get looks key up. The record is returned only when its blob is present,
// so a record whose blob was lost (a crash, a concurrent prune) is a miss.
// A hit refreshes LastUsed by touching the record file.
func (l *Local) Get(ctx context.Context, key digest.Digest) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	rec, err := l.readRecord(key)
	if err != nil {
		return Record{}, err
	}
	// Pinned, then checked again: a collection that ran in between may
	// have taken the blob, and is a miss.
	if !rec.Layer.IsZero() {
		if err := l.pin(ctx, rec.Layer); err != nil {
			return Record{}, err
		}
		if !l.hasBlob(rec.Layer) {
			return Record{}, fmt.Errorf("%s: %s: blob %s missing: %w", l, key, rec.Layer.Digest, ErrNotFound)
		}
	}
	if l.readOnly {
		return rec, nil
	}
	now := l.now()
	// Best effort: a read-only restored cache still answers lookups.
	if err := os.Chtimes(l.recordPath(key), now, now); err == nil {
		rec.LastUsed = now
	}
	// The hit's caller reads the blob later: marked used, a Flush that
	// drops this record meanwhile leaves the blob for blobGrace. Flush
	// removes records before it looks at blobs, so a record still there
	// after the mark means any Flush removing it sees the mark; one gone
	// already is a miss.
	l.markUsed(rec.Layer, now)
	if _, err := os.Lstat(l.recordPath(key)); errors.Is(err, fs.ErrNotExist) {
		return Record{}, fmt.Errorf("%s: %s: %w", l, key, ErrNotFound)
	}
	return rec, nil
}

// readRecord reads a record file and checks its blob exists. LastUsed is
// the file's modification time.
func (l *Local) readRecord(key digest.Digest) (Record, error) {
	if err := key.Validate(); err != nil {
		return Record{}, fmt.Errorf("cache key %q: %w", key, err)
	}
	p := l.recordPath(key)
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Record{}, fmt.Errorf("%s: %s: %w", l, key, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("%s: reading record %s: %w", l, key, err)
	}
	defer f.Close()
	var w wireRecord
	if err := json.NewDecoder(f).Decode(&w); err != nil {
		return Record{}, fmt.Errorf("%s: record %s: %w", l, key, err)
	}
	rec, err := fromWire(w)
	if err != nil {
		return Record{}, fmt.Errorf("%s: %w", l, err)
	}
	if rec.Key != key {
		return Record{}, fmt.Errorf("%s: record file for %s holds %s: %w", l, key, rec.Key, ErrNotFound)
	}
	if fi, err := f.Stat(); err == nil {
		rec.LastUsed = fi.ModTime()
	}
	if !rec.Layer.IsZero() {
		fi, err := os.Stat(l.blobPath(rec.Layer.Digest))
		if err != nil || fi.Size() != rec.Layer.Size {
			return Record{}, fmt.Errorf("%s: %s: blob %s missing: %w", l, key, rec.Layer.Digest, ErrNotFound)
		}
	}
	return rec, nil
}

// Previous returns the record most recently Put with stepID.
func (l *Local) Previous(ctx context.Context, stepID string) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	b, err := os.ReadFile(l.stepPath(stepID))
	if errors.Is(err, fs.ErrNotExist) {
		return Record{}, fmt.Errorf("%s: step %q: %w", l, stepID, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("%s: step %q: %w", l, stepID, err)
	}
	key, err := digest.Parse(strings.TrimSpace(string(b)))
	if err != nil {
		return Record{}, fmt.Errorf("%s: step %q: %w", l, stepID, err)
	}
	return l.readRecord(key)
}

// Layer returns rec's blob as a lazy layer; the file is opened when read
// and its bytes are verified against rec.Layer.Digest (and, uncompressed,
// DiffID). A read that fails on a blob whose file no longer matches its
// digest removes the blob and says so: the records naming it are then
// misses, so the next build rebuilds the step instead of failing again.
func (l *Local) Layer(ctx context.Context, rec Record) (v1.Layer, error) {
	if rec.Layer.IsZero() {
		return nil, fmt.Errorf("%s: %s: %w", l, rec.Key, ErrNoLayer)
	}
	desc := rec.Layer
	lazy, err := newLazyLayer(desc, func() (io.ReadCloser, error) {
		f, err := os.Open(l.blobPath(desc.Digest))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: blob %s: %w", l, desc.Digest, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", l, err)
		}
		return newVerifyReader(f, desc.Digest, desc.Size)
	})
	if err != nil {
		return nil, err
	}
	return &localLayer{Layer: lazy, store: l, desc: desc}, nil
}

// localLayer drops its blob from the store when a read of it fails and the
// file turns out corrupt. The check hashes the file only after a failed
// read, so a good blob costs nothing extra. A corrupt gzip stream fails in
// the decompressor before the digest check sees the end, which is why
// every read error is checked, not only ErrDigestMismatch.
type localLayer struct {
	v1.Layer
	store *Local
	desc  Descriptor
}

func (l *localLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	return &checkedReader{ReadCloser: rc, onErr: l.dropIfCorrupt}, nil
}

func (l *localLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, l.dropIfCorrupt(err)
	}
	return &checkedReader{ReadCloser: rc, onErr: l.dropIfCorrupt}, nil
}

// dropIfCorrupt checks the blob file after a read failed with err: when
// its size or digest is wrong it is removed, and the error says so.
func (l *localLayer) dropIfCorrupt(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrNotFound) {
		return err
	}
	p := l.store.blobPath(l.desc.Digest)
	if ok, cerr := fileMatches(p, l.desc); cerr != nil || ok {
		return err // unreadable, or intact: the failure was elsewhere
	}
	if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return fmt.Errorf("%w (the blob is corrupt and could not be removed: %v)", err, rerr)
	}
	return fmt.Errorf("%w: %s: blob %s is corrupt on disk (%v) and was removed; the next build rebuilds the steps that used it", ErrDigestMismatch, l.store, l.desc.Digest, err)
}

// fileMatches reports whether the file at p has d's size and digest.
func fileMatches(p string, d Descriptor) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	vr, err := newVerifyReader(f, d.Digest, d.Size)
	if err != nil {
		return false, err
	}
	_, err = io.Copy(io.Discard, vr)
	if errors.Is(err, ErrDigestMismatch) {
		return false, nil
	}
	return err == nil, err
}

// checkedReader passes a read error (not EOF) through onErr once.
type checkedReader struct {
	io.ReadCloser
	onErr func(error) error
	done  bool
}

func (r *checkedReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && !r.done {
		r.done = true
		err = r.onErr(err)
	}
	return n, err
}

// Put stores the blob (unless present), then the record, then points the
// step index at it. Each file appears whole or not at all, so a crash
// leaves at most a temporary file, never a record without its blob. It
// pins the blob in the build's lease first, so a collection cannot take
// the new blob before its record exists, and holds the shared lock while
// writing, so nobody takes its temporary file for a leftover.
func (l *Local) Put(ctx context.Context, rec Record, layer v1.Layer) error {
	if l.readOnly {
		return fmt.Errorf("%s: put %s: %w", l, rec.Key, ErrReadOnly)
	}
	rec, err := prepare(rec, layer)
	if err != nil {
		return err
	}
	unlock, err := l.Lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := l.pin(ctx, rec.Layer); err != nil {
		return fmt.Errorf("%s: put %s: %w", l, rec.Key, err)
	}
	if !rec.Layer.IsZero() {
		if err := l.putBlob(ctx, rec.Layer, layer.Compressed); err != nil {
			return fmt.Errorf("%s: put %s: %w", l, rec.Key, err)
		}
	}
	rec.LastUsed = l.now()
	l.markUsed(rec.Layer, rec.LastUsed)
	if rec.Created.IsZero() {
		rec.Created = rec.LastUsed
	}
	if err := l.putRecord(rec); err != nil {
		return fmt.Errorf("%s: put %s: %w", l, rec.Key, err)
	}
	return nil
}

// markUsed sets the blob's mtime, which Flush reads as its last use; best
// effort, like the record's LastUsed (a read-only directory still hits).
func (l *Local) markUsed(d Descriptor, now time.Time) {
	if !d.IsZero() {
		_ = os.Chtimes(l.blobPath(d.Digest), now, now)
	}
}

// hasBlob reports whether the blob is stored whole.
func (l *Local) hasBlob(d Descriptor) bool {
	fi, err := os.Stat(l.blobPath(d.Digest))
	return err == nil && fi.Mode().IsRegular() && fi.Size() == d.Size
}

// putBlob copies the compressed bytes into the blob store, verifying
// digest and size before the rename makes them visible.
func (l *Local) putBlob(ctx context.Context, d Descriptor, open func() (io.ReadCloser, error)) error {
	if l.hasBlob(d) {
		return nil
	}
	rc, err := open()
	if err != nil {
		return fmt.Errorf("reading layer %s: %w", d.Digest, err)
	}
	defer rc.Close()
	vr, err := newVerifyReader(rc, d.Digest, d.Size)
	if err != nil {
		return err
	}
	return l.writeFile(l.blobPath(d.Digest), func(w io.Writer) error {
		if _, err := io.Copy(w, ioctx.Reader(ctx, vr)); err != nil {
			return fmt.Errorf("writing blob %s: %w", d.Digest, err)
		}
		return nil
	})
}

// putRecord writes the record file (mtime = LastUsed), then the step index.
func (l *Local) putRecord(rec Record) error {
	b, err := json.MarshalIndent(toWire(rec), "", "  ")
	if err != nil {
		return fmt.Errorf("encoding record: %w", err)
	}
	p := l.recordPath(rec.Key)
	if err := l.writeFile(p, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	}); err != nil {
		return err
	}
	if err := os.Chtimes(p, rec.LastUsed, rec.LastUsed); err != nil {
		return fmt.Errorf("setting last use: %w", err)
	}
	if rec.StepID == "" {
		return nil
	}
	return l.writeFile(l.stepPath(rec.StepID), func(w io.Writer) error {
		_, err := io.WriteString(w, rec.Key.String()+"\n")
		return err
	})
}

// writeFile writes final through a temporary file in tmp/: write, fsync,
// rename, fsync the directory. Readers see the old file or the new one,
// whole.
func (l *Local) writeFile(final string, write func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Join(l.dir, "tmp"), "w-*")
	if err != nil {
		return fmt.Errorf("creating temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := write(f); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("chmod %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return fmt.Errorf("rename into %s: %w", final, err)
	}
	return syncDir(filepath.Dir(final))
}

// syncDir makes a rename in dir durable, so that after a power loss a
// record is never present while the blob renamed before it is not.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

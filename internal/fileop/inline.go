package fileop

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"strings"
	"time"
)

// File is an inline file of a COPY heredoc (COPY <<EOF ...).
type File struct {
	Name string
	Data []byte
}

// WriteFiles writes inline files to dest/<Name>. dest is a directory when it
// ends with "/" or already exists as a directory; with exactly one file and
// neither, dest is the file's own path. Files get mode 0644 unless chmod, and
// owner chown (nil = 0:0). The mtime is the current time; the layer writer
// clamps it for reproducible builds.
func WriteFiles(ctx context.Context, rootfs, dest string, files []File, chown *Owner, chmod *Chmod) ([]string, error) {
	w, err := newWriter(rootfs)
	if err != nil {
		return nil, err
	}
	defer w.close()
	lp := logical(dest)
	isDir := strings.HasSuffix(dest, "/") || lp == ""
	if !isDir {
		if abs, _, err := w.resolve(lp, true); err == nil {
			if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
				isDir = true
			}
		}
	}
	if !isDir && len(files) > 1 {
		return nil, fmt.Errorf("copy to %s: %w", dest, ErrDestNotDir)
	}
	m := meta{mode: 0o644, mtime: time.Now()}
	if chown != nil {
		m.uid, m.gid = chown.UID, chown.GID
	}
	if chmod != nil {
		m.mode = chmod.apply(m.mode)
	}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		target := lp
		if isDir {
			name, err := cleanSource(f.Name)
			if err != nil || name == "" || strings.Contains(name, "/") {
				return nil, fmt.Errorf("inline file name %q: %w", f.Name, ErrOutsideContext)
			}
			target = path.Join(lp, name)
		}
		if err := w.mkdirAll(ctx, path.Dir(target), chown); err != nil {
			return nil, err
		}
		if err := w.writeFile(target, bytes.NewReader(f.Data), m); err != nil {
			return nil, err
		}
	}
	return w.result(), nil
}

package output

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// writeFileAtomic replaces path with data.
func writeFileAtomic(path string, data []byte) error {
	return writeFileWith(path, "", func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// TempPattern is the glob matching the temporary siblings an export to
// dest with Env.TempTag tag writes before renaming them into place: what
// a killed export leaves behind.
func TempPattern(dest, tag string) string {
	dest = filepath.Clean(dest)
	return filepath.Join(filepath.Dir(dest), tempPrefix(dest, tag)+"*")
}

func tempPrefix(dest, tag string) string {
	p := "." + filepath.Base(dest) + ".tmp-"
	if tag != "" {
		p += tag + "-"
	}
	return p
}

// writeFileWith writes a sibling temporary file (named with tag, see
// TempPattern) with fill, syncs it and renames it over path. On any
// failure the temporary is removed and path is left as it was.
func writeFileWith(path, tag string, fill func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, tempPrefix(path, tag))
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := fill(bw); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// fillDir fills a fresh sibling temporary directory and then moves it into
// place at dest. When dest is a directory already, its entries are
// replaced one by one by the new ones (entries the new tree lacks stay, as
// with buildx's local exporter); when it does not exist it appears whole.
func fillDir(dest, tag string, fill func(dir string) error) (err error) {
	parent := filepath.Dir(filepath.Clean(dest))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", parent, err)
	}
	tmp, err := os.MkdirTemp(parent, tempPrefix(filepath.Clean(dest), tag))
	if err != nil {
		return fmt.Errorf("writing %s: %w", dest, err)
	}
	defer os.RemoveAll(tmp) // gone after a whole rename; leftovers otherwise
	if err := fill(tmp); err != nil {
		return err
	}
	st, err := os.Lstat(dest)
	switch {
	case os.IsNotExist(err):
		if err := os.Chmod(tmp, 0o755); err != nil {
			return fmt.Errorf("writing %s: %w", dest, err)
		}
		if err := os.Rename(tmp, dest); err != nil {
			return fmt.Errorf("writing %s: %w", dest, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("writing %s: %w", dest, err)
	case !st.IsDir():
		return fmt.Errorf("writing %s: exists and is not a directory", dest)
	}
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return fmt.Errorf("writing %s: %w", dest, err)
	}
	for _, e := range entries {
		target := filepath.Join(dest, e.Name())
		if err := os.RemoveAll(target); err != nil {
			return fmt.Errorf("replacing %s: %w", target, err)
		}
		if err := os.Rename(filepath.Join(tmp, e.Name()), target); err != nil {
			return fmt.Errorf("replacing %s: %w", target, err)
		}
	}
	return nil
}

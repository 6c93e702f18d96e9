package testenv

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// OCI whiteout markers (image-spec layer.md): ".wh.NAME" deletes NAME from
// lower layers; ".wh..wh..opq" in a directory hides everything lower layers
// put in that directory.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// Entry is one path of a merged image filesystem.
type Entry struct {
	// Type is the tar typeflag (tar.TypeReg, tar.TypeDir, tar.TypeSymlink,
	// tar.TypeLink, ...). archive/tar already reports the legacy TypeRegA
	// as TypeReg.
	Type byte
	// Mode holds the permission bits plus setuid, setgid and sticky (07777).
	Mode     int64
	UID, GID int
	// Linkname is the target of a symlink or hard link (as stored in the tar).
	Linkname string
	// Content is the bytes of a regular file. A hard link carries the
	// content of the file it links to, so tests can read either name.
	Content []byte
	// Xattrs are the extended attributes the layer's PAX records give
	// the entry ("security.capability": raw value); nil when none.
	Xattrs map[string]string
}

// Tree returns img's merged filesystem: layers applied in order, honouring
// OCI whiteouts and opaque directories. Keys are slash-separated paths
// without a leading slash ("etc/passwd"); the root itself is not included.
func Tree(t testing.TB, img v1.Image) map[string]Entry {
	t.Helper()
	tree, err := treeOf(img)
	if err != nil {
		t.Fatalf("testenv: Tree: %v", err)
	}
	return tree
}

func treeOf(img v1.Image) (map[string]Entry, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("list layers: %w", err)
	}
	tree := map[string]Entry{}
	for i, l := range layers {
		if err := applyLayer(tree, l); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return tree, nil
}

// layerEntry is a tar entry read from one layer, before it is merged.
type layerEntry struct {
	name  string
	entry Entry
}

// applyLayer merges one layer into tree. Whiteouts in a layer only affect
// lower layers, and may come after entries of the same layer in the tar, so
// the layer is read fully, deletions are applied, then its entries added.
func applyLayer(tree map[string]Entry, l v1.Layer) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer rc.Close()

	var (
		adds     []layerEntry
		opaque   []string
		whiteout []string
	)
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		name := cleanName(hdr.Name)
		if name == "" {
			continue // the root directory itself
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		switch {
		case base == whiteoutOpaque:
			opaque = append(opaque, dir)
			continue
		case strings.HasPrefix(name, whiteoutMeta) || strings.Contains(name, "/"+whiteoutMeta):
			continue // other AUFS metadata (.wh..wh.plnk/...) is not content
		case strings.HasPrefix(base, whiteoutPrefix):
			whiteout = append(whiteout, path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix)))
			continue
		}
		e := Entry{
			Type:     hdr.Typeflag,
			Mode:     hdr.Mode & 0o7777,
			UID:      hdr.Uid,
			GID:      hdr.Gid,
			Linkname: hdr.Linkname,
		}
		for k, v := range hdr.PAXRecords {
			if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if e.Xattrs == nil {
					e.Xattrs = map[string]string{}
				}
				e.Xattrs[attr] = v
			}
		}
		if e.Type == tar.TypeReg {
			if e.Content, err = io.ReadAll(tr); err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			if e.Content == nil {
				e.Content = []byte{}
			}
		}
		adds = append(adds, layerEntry{name: name, entry: e})
	}

	for _, dir := range opaque {
		removeChildren(tree, dir)
	}
	for _, p := range whiteout {
		delete(tree, p)
		removeChildren(tree, p)
	}
	// Entries added so far in this layer, so a hard link can find a target
	// that this same layer wrote (the usual case).
	for _, a := range adds {
		if old, ok := tree[a.name]; ok && old.Type == tar.TypeDir && a.entry.Type != tar.TypeDir {
			// A non-directory replacing a directory hides its contents.
			removeChildren(tree, a.name)
		}
		if a.entry.Type == tar.TypeLink {
			target, ok := tree[cleanName(a.entry.Linkname)]
			if !ok {
				return fmt.Errorf("hard link %s to missing %s", a.name, a.entry.Linkname)
			}
			a.entry.Content = target.Content
		}
		tree[a.name] = a.entry
	}
	return nil
}

// removeChildren deletes every path strictly under dir ("" is the root).
func removeChildren(tree map[string]Entry, dir string) {
	if dir == "" {
		clear(tree)
		return
	}
	prefix := dir + "/"
	for p := range tree {
		if strings.HasPrefix(p, prefix) {
			delete(tree, p)
		}
	}
}

// cleanName turns a tar entry name ("./etc/", "/etc/passwd") into a tree key
// ("etc", "etc/passwd").
func cleanName(n string) string {
	n = path.Clean("/" + n)
	return strings.TrimPrefix(n, "/")
}

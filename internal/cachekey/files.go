package cachekey

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
)

// File is one context file a step reads: its path in the context and the
// digest of its content (and mode).
type File struct {
	Path   string
	Digest string
}

const (
	// maxNamedFiles bounds how many files a step names one by one
	// ("file:<path>"); past it one digest stands for them all ("files"),
	// so a record's size does not grow with names.
	maxNamedFiles = 2000
	// maxIndexedFiles bounds the index that still lets a miss name the
	// changed files past maxNamedFiles: 8 bytes a file, 2 MB at most.
	// Past it a miss says only "files changed".
	maxIndexedFiles = 250_000
	// filesIndex is the compact index of the files of a step past
	// maxNamedFiles (see index); a note, so never part of the key.
	filesIndex = notePrefix + "files"
	// indexVersion tags the index encoding; an index of another version
	// is ignored (the miss then says "files changed").
	indexVersion = "v1:"
)

// AddFiles adds the files a step reads to its inputs: each by name when
// there are few; past maxNamedFiles one digest for them all plus a compact
// index, so a miss in a 20,000-file context still names the changed file.
func AddFiles(in Inputs, files []File) {
	if len(files) <= maxNamedFiles {
		for _, f := range files {
			in["file:"+f.Path] = f.Digest
		}
		return
	}
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%s\x00", f.Path, f.Digest)
	}
	in["files"] = fmt.Sprintf("sha256:%x (%d files)", h.Sum(nil), len(files))
	if len(files) <= maxIndexedFiles {
		in[filesIndex] = index(files)
	}
}

// index encodes each file as 4 bytes of the digest of its path and 4 of
// the digest of its path and content, sorted: enough to tell, with a
// collision chance of about one in 200,000 per file in a 20,000-file
// context, which of today's files are new or changed (their names come
// from today's list) and how many were removed. It explains; it never
// decides a hit.
func index(files []File) string {
	b := make([]byte, 0, 8*len(files))
	for _, f := range files {
		p, e := fileHashes(f)
		b = append(b, p[:]...)
		b = append(b, e[:]...)
	}
	entries := make([][]byte, len(files))
	for i := range entries {
		entries[i] = b[8*i : 8*i+8]
	}
	slices.SortFunc(entries, bytes.Compare)
	out := make([]byte, 0, len(b))
	for _, e := range entries {
		out = append(out, e...)
	}
	return indexVersion + base64.RawStdEncoding.EncodeToString(out)
}

func fileHashes(f File) (path, entry [4]byte) {
	p := sha256.Sum256([]byte(f.Path))
	e := sha256.Sum256([]byte(f.Path + "\x00" + f.Digest))
	copy(path[:], p[:4])
	copy(entry[:], e[:4])
	return path, entry
}

// decodeIndex returns the path and entry hashes of an index, or false
// when it is not one this version writes.
func decodeIndex(s string) (paths, entries map[[4]byte]bool, ok bool) {
	body, found := strings.CutPrefix(s, indexVersion)
	if !found {
		return nil, nil, false
	}
	b, err := base64.RawStdEncoding.DecodeString(body)
	if err != nil || len(b)%8 != 0 {
		return nil, nil, false
	}
	paths, entries = make(map[[4]byte]bool, len(b)/8), make(map[[4]byte]bool, len(b)/8)
	for i := 0; i < len(b); i += 8 {
		paths[[4]byte(b[i:i+4])] = true
		entries[[4]byte(b[i+4:i+8])] = true
	}
	return paths, entries, true
}

// isFileInput says whether an input describes the files a step reads.
func isFileInput(name string) bool {
	return name == "files" || name == filesIndex || strings.HasPrefix(name, "file:")
}

// fileChanges names the files that changed between a step's earlier
// inputs and now (files are today's; nil takes them from now's "file:"
// inputs): by name where the earlier record has names or an index, and
// as "files changed" where it has neither (an unreadable context, or a
// record past maxIndexedFiles).
func fileChanges(before, now Inputs, files []File) []string {
	if before["files"] == now["files"] && before[filesIndex] == now[filesIndex] && namedEqual(before, now) {
		return nil
	}
	if files == nil {
		for k, v := range now {
			if p, ok := strings.CutPrefix(k, "file:"); ok {
				files = append(files, File{Path: p, Digest: v})
			}
		}
	}
	_, nowAggregate := now["files"]
	_, nowIndexed := now[filesIndex]
	if nowAggregate && !nowIndexed && len(files) == 0 {
		return []string{"files changed"} // nothing to name them by
	}
	var out []string
	if idx, ok := before[filesIndex]; ok {
		paths, entries, ok := decodeIndex(idx)
		if !ok {
			return []string{"files changed"}
		}
		here := make(map[[4]byte]bool, len(files))
		for _, f := range files {
			p, e := fileHashes(f)
			here[p] = true
			switch {
			case !paths[p]:
				out = append(out, "file "+f.Path+" added")
			case !entries[e]:
				out = append(out, "file "+f.Path+" changed")
			}
		}
		removed := 0
		for p := range paths {
			if !here[p] {
				removed++
			}
		}
		switch {
		case removed == 1:
			out = append(out, "1 file removed")
		case removed > 1:
			out = append(out, fmt.Sprintf("%d files removed", removed))
		}
		return out
	}
	if _, ok := before["files"]; ok {
		return []string{"files changed"} // an aggregate without an index
	}
	// The earlier record names its files: compare by name.
	seen := make(map[string]bool, len(files))
	for _, f := range files {
		seen[f.Path] = true
		if old, ok := before["file:"+f.Path]; !ok {
			out = append(out, "file "+f.Path+" added")
		} else if old != f.Digest {
			out = append(out, "file "+f.Path+" changed")
		}
	}
	for k := range before {
		if p, ok := strings.CutPrefix(k, "file:"); ok && !seen[p] {
			out = append(out, "file "+p+" removed")
		}
	}
	return out
}

// namedEqual says whether before and now name the same files alike.
func namedEqual(before, now Inputs) bool {
	n := 0
	for k, v := range now {
		if strings.HasPrefix(k, "file:") {
			n++
			if before[k] != v {
				return false
			}
		}
	}
	for k := range before {
		if strings.HasPrefix(k, "file:") {
			n--
		}
	}
	return n == 0
}

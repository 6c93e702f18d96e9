package archive

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
)

// IsSparse reports whether h is a GNU or PAX sparse file, whose holes
// archive/tar returns as zeros.
func IsSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// holeBlock is the granularity of holes: a filesystem block.
const holeBlock = 4096

var zeros = make([]byte, holeBlock)

// WriteSparse copies r to f (at its start, f empty), seeking over every
// all-zero block instead of writing it, so the holes of a sparse entry
// stay holes on disk; the file is then truncated to its full length.
func WriteSparse(f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		for i := 0; i < n; i += holeBlock {
			b := buf[i:min(i+holeBlock, n)]
			if !bytes.Equal(b, zeros[:len(b)]) {
				if _, werr := f.WriteAt(b, off); werr != nil {
					return off, fmt.Errorf("write: %w", werr)
				}
			}
			off += int64(len(b))
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return off, err
		}
	}
	if err := f.Truncate(off); err != nil {
		return off, fmt.Errorf("truncate: %w", err)
	}
	return off, nil
}

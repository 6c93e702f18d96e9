package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compression names a stream's compression.
type Compression string

// The compressions Decompress reads: BuildKit's ADD detects the same four.
const (
	Uncompressed Compression = "uncompressed"
	Gzip         Compression = "gzip"
	Bzip2        Compression = "bzip2"
	Xz           Compression = "xz"
	Zstd         Compression = "zstd"
)

var magics = []struct {
	c     Compression
	magic []byte
}{
	{Gzip, []byte{0x1f, 0x8b}},
	{Bzip2, []byte("BZh")},
	{Xz, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{Zstd, []byte{0x28, 0xb5, 0x2f, 0xfd}},
}

// Detect reports the compression of the stream starting with head.
func Detect(head []byte) Compression {
	for _, m := range magics {
		if bytes.HasPrefix(head, m.magic) {
			return m.c
		}
	}
	return Uncompressed
}

// Decompress returns r decompressed, detecting the compression from the
// first bytes. Close releases the decoder (it does not close r).
func Decompress(r io.Reader) (io.ReadCloser, Compression, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(6)
	c := Detect(head)
	rc, err := NewReader(br, c)
	return rc, c, err
}

// NewReader returns r decompressed with c. Close releases the decoder (it
// does not close r).
func NewReader(r io.Reader, c Compression) (io.ReadCloser, error) {
	switch c {
	case Uncompressed, "":
		return io.NopCloser(r), nil
	case Gzip:
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("open gzip stream: %w", err)
		}
		return z, nil
	case Bzip2:
		return io.NopCloser(bzip2.NewReader(r)), nil
	case Xz:
		x, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("open xz stream: %w", err)
		}
		return io.NopCloser(x), nil
	case Zstd:
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("open zstd stream: %w", err)
		}
		return zstdCloser{d}, nil
	}
	return nil, fmt.Errorf("unknown compression %q", c)
}

type zstdCloser struct{ *zstd.Decoder }

func (z zstdCloser) Close() error { z.Decoder.Close(); return nil }

// OpenTar returns a tar reader when r is a tar archive, plain or
// compressed (see Decompress), and ok=false when it is not, in which case
// ADD copies the file as it is. A tar is recognised by "ustar" at offset
// 257 of its first header (POSIX and GNU); v7 tars are not, as in BuildKit.
func OpenTar(r io.Reader) (tr *tar.Reader, closer io.Closer, ok bool, err error) {
	dr, _, err := Decompress(r)
	if err != nil {
		// Not a valid stream of what its magic said: not an archive.
		return nil, nil, false, nil
	}
	br := bufio.NewReaderSize(dr, 1024)
	hdr, err := br.Peek(512)
	if err != nil || !bytes.Equal(hdr[257:262], []byte("ustar")) {
		_ = dr.Close()
		return nil, nil, false, nil
	}
	return tar.NewReader(br), dr, true, nil
}

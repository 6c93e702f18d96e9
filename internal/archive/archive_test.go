package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

func TestClean(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"a/b", "a/b"}, {"/a/b/", "a/b"}, {"./a/./b", "a/b"}, {"a/../b", "b"},
		{".", "."}, {"/", "."}, {"", "."}, {"a/..", "."}, {"//x", "x"},
	} {
		got, err := Clean(c.in)
		if err != nil || got != c.want {
			t.Errorf("Clean(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"..", "../x", "a/../../x", "/../x", "a/b/../../../c"} {
		_, err := Clean(in)
		if !errors.Is(err, ErrEscapes) || !strings.Contains(err.Error(), "escapes the destination") {
			t.Errorf("Clean(%q) = %v, want ErrEscapes", in, err)
		}
	}
	if got, err := Join("x/y", "/a/../b"); err != nil || got != "x/y/b" {
		t.Errorf("Join = %q, %v", got, err)
	}
}

func TestParseWhiteout(t *testing.T) {
	for _, c := range []struct {
		in     string
		kind   WhiteoutKind
		target string
	}{
		{"a/b", NotWhiteout, ""}, {"a/.wh.b", Whiteout, "a/b"}, {".wh.x", Whiteout, "x"},
		{"d/.wh..wh..opq", Opaque, "d"}, {".wh..wh..opq", Opaque, "."}, {"a/.wh..wh.plnk", Meta, ""},
	} {
		k, target, err := ParseWhiteout(c.in)
		if err != nil || k != c.kind || target != c.target {
			t.Errorf("ParseWhiteout(%q) = %v %q %v; want %v %q", c.in, k, target, err, c.kind, c.target)
		}
	}
	if _, _, err := ParseWhiteout("a/.wh.."); !errors.Is(err, ErrEscapes) {
		t.Errorf("a whiteout of .. = %v", err)
	}
	if WhiteoutName("a/b") != "a/.wh.b" || OpaqueName("d") != "d/.wh..wh..opq" {
		t.Error("whiteout names")
	}
}

func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// compressWith runs a compressor program, as the archives users ADD are
// made.
func compressWith(t *testing.T, prog string, in []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath(prog); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: %s not installed", prog)
		}
		t.Skipf("%s not installed", prog)
	}
	cmd := exec.Command(prog, "-c")
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", prog, err)
	}
	return out
}

func TestOpenTarDetectsCompression(t *testing.T) {
	plain := tarOf(t, map[string]string{"f": "hello"})
	var gz, zs bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain)
	zw.Close()
	ze, _ := zstd.NewWriter(&zs)
	ze.Write(plain)
	ze.Close()
	for _, c := range []struct {
		name string
		data []byte
		want Compression
	}{
		{"plain", plain, Uncompressed}, {"gzip", gz.Bytes(), Gzip}, {"zstd", zs.Bytes(), Zstd},
		{"bzip2", compressWith(t, "bzip2", plain), Bzip2}, {"xz", compressWith(t, "xz", plain), Xz},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Detect(c.data); got != c.want {
				t.Errorf("Detect = %s, want %s", got, c.want)
			}
			tr, cl, ok, err := OpenTar(bytes.NewReader(c.data))
			if err != nil || !ok {
				t.Fatalf("OpenTar: ok=%v err=%v", ok, err)
			}
			defer cl.Close()
			h, err := tr.Next()
			if err != nil || h.Name != "f" {
				t.Fatalf("first entry %v %v", h, err)
			}
			if b, _ := io.ReadAll(tr); string(b) != "hello" {
				t.Errorf("body %q", b)
			}
		})
	}
	for _, notTar := range [][]byte{[]byte("just text"), {0x1f, 0x8b, 0, 0}, bytes.Repeat([]byte{0}, 600)} {
		if _, _, ok, err := OpenTar(bytes.NewReader(notTar)); ok || err != nil {
			t.Errorf("OpenTar(%q) = ok %v, %v; want not an archive", notTar[:4], ok, err)
		}
	}
}

// readAll runs an archive through a meter as an extraction would.
func readAll(m *Meter, data []byte) error {
	tr, cl, ok, err := OpenTar(m.Input(bytes.NewReader(data)))
	if err != nil || !ok {
		return errors.New("not a tar")
	}
	defer cl.Close()
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := m.Entry(h); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, m.Data(tr)); err != nil {
			return err
		}
	}
}

func TestMeterLimits(t *testing.T) {
	many := map[string]string{}
	for i := range 10 {
		many[strings.Repeat("x", i+1)] = "1"
	}
	if err := readAll(NewMeter(Limits{MaxEntries: 9}), tarOf(t, many)); !errors.Is(err, ErrLimit) {
		t.Errorf("10 entries, at most 9: %v", err)
	}
	if err := readAll(NewMeter(Limits{MaxEntries: 10}), tarOf(t, many)); err != nil {
		t.Errorf("10 entries, at most 10: %v", err)
	}
	big := tarOf(t, map[string]string{"big": strings.Repeat("z", 1<<20)})
	if err := readAll(NewMeter(Limits{MaxBytes: 1 << 19}), big); !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "big holds 1.0 MiB") {
		t.Errorf("1 MiB, at most 512 KiB: %v", err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(big)
	zw.Close()
	// 1 MiB of one byte compresses ~1000:1.
	if err := readAll(NewMeter(Limits{MaxRatio: 100, RatioAfter: 256 << 10}), gz.Bytes()); !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "more than 100 times") {
		t.Errorf("ratio ~1000, at most 100: %v", err)
	}
	// Below RatioAfter the ratio is not checked.
	if err := readAll(NewMeter(Limits{MaxRatio: 100, RatioAfter: 4 << 20}), gz.Bytes()); err != nil {
		t.Errorf("under RatioAfter: %v", err)
	}
	// Through io.ReadFull, which drops an error that comes with a full
	// buffer: the meter stops the copy at the limit.
	m := NewMeter(Limits{MaxRatio: 100, RatioAfter: 256 << 10})
	tr, _, _, _ := OpenTar(m.Input(bytes.NewReader(gz.Bytes())))
	tr.Next()
	f, _ := os.Create(filepath.Join(t.TempDir(), "f"))
	defer f.Close()
	if n, err := WriteSparse(f, m.Data(tr)); !errors.Is(err, ErrLimit) || n > 512<<10 {
		t.Errorf("WriteSparse past the ratio: %d bytes, %v", n, err)
	}
	if err := readAll(NewMeter(DefaultLimits), gz.Bytes()); err != nil {
		t.Errorf("default limits refuse a 1 MiB file: %v", err)
	}
}

func TestWriteSparse(t *testing.T) {
	const n = 32 << 20
	data := make([]byte, n)
	copy(data[n/2:], "middle")
	copy(data[n-5:], "tail!")
	f, err := os.Create(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := WriteSparse(f, bytes.NewReader(data))
	if err != nil || got != n {
		t.Fatalf("WriteSparse = %d, %v", got, err)
	}
	back, _ := os.ReadFile(f.Name())
	if !bytes.Equal(back, data) {
		t.Fatal("content differs")
	}
	fi, _ := f.Stat()
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 1<<20 {
		t.Errorf("%d bytes allocated for a 32 MiB file of two blocks of data", blocks)
	}
	// Trailing zeros are a hole too, and the length is kept.
	f2, _ := os.Create(filepath.Join(t.TempDir(), "z"))
	defer f2.Close()
	if _, err := WriteSparse(f2, bytes.NewReader(make([]byte, 1<<20))); err != nil {
		t.Fatal(err)
	}
	if fi, _ := f2.Stat(); fi.Size() != 1<<20 {
		t.Errorf("size %d", fi.Size())
	}
}

func TestRootScopesSymlinks(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	for name, target := range map[string]string{
		"abs":     "/",
		"up":      "../../../..",
		"out":     outside,
		"rel":     "sub/inner",
		"sub/up2": "../abs/sub",
		"loop":    "loop",
	} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	r, err := OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for p, want := range map[string]string{
		"abs/x": "x", "up/x": "x", "out/x": strings.TrimPrefix(outside, "/") + "/x",
		"rel/x": "sub/inner/x", "sub/up2/y": "sub/y", "a/b/c": "a/b/c",
	} {
		_, phys, err := r.Dir(p, true)
		if err != nil || phys != want {
			t.Errorf("Dir(%s) = %q, %v; want %q", p, phys, err, want)
		}
		if _, err := os.Stat(filepath.Join(dir, want)); err != nil {
			t.Errorf("%s not created inside the root: %v", want, err)
		}
	}
	if _, _, err := r.Dir("loop/x", true); !errors.Is(err, unix.ELOOP) {
		t.Errorf("a symlink loop: %v", err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("created outside the root: %v", entries)
	}
}

// A 2500-deep chain (7.5 KB of path, past PATH_MAX) resolves in one
// pass of openat calls, each relative to its parent; then every level of it
// again, as an archive listing the directories one by one would ask: each
// costs one step from the cached chain.
func TestRootDeepIsLinear(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const depth = 2500
	deep := strings.TrimSuffix(strings.Repeat("dd/", depth), "/")
	start := time.Now()
	fd, _, err := r.Dir(deep, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkdirat(fd, "leaf", 0o755); err != nil {
		t.Fatal(err)
	}
	r.Forget(0)
	for i := 1; i <= depth; i++ {
		if _, _, err := r.Dir(deep[:3*i-1], false); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := r.Dir(deep+"/leaf", false); err != nil {
		t.Errorf("re-resolving 7.5 KB of path: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("2500 nested directories took %v", d)
	}
	if len(r.chain) != depth+1 {
		t.Errorf("chain holds %d levels, want %d", len(r.chain), depth+1)
	}
}

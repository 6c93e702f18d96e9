package cli_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/testenv"
)

// tarOf writes a tar of hdrs (bodies for regular files) to dir/name.
func tarOf(t *testing.T, dir, name string, hdrs []*tar.Header, bodies map[string]string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(bodies[h.Name]))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(bodies[h.Name])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

var stepDone = regexp.MustCompile(`(?m)^#(\d+) DONE ([0-9.]+)s`)

// stepSeconds is the duration kiln's plain progress reports for step n.
func stepSeconds(t *testing.T, stderr string, n int) float64 {
	t.Helper()
	for _, m := range stepDone.FindAllStringSubmatch(stderr, -1) {
		if m[1] == strconv.Itoa(n) {
			s, _ := strconv.ParseFloat(m[2], 64)
			return s
		}
	}
	t.Fatalf("no DONE for step #%d in:\n%s", n, stderr)
	return 0
}

// kilnCPU runs kiln in dir with a home of its own and returns its
// output and the CPU time it used (user + system): on a runner shared with
// other jobs, wall time measures the neighbours as much as kiln.
func kilnCPU(t testing.TB, home, dir string, args ...string) (string, time.Duration) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), testenv.Kiln(t), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+home+"/.cache", "XDG_CONFIG_HOME="+home+"/.config",
		"XDG_DATA_HOME="+home+"/.local/share", "XDG_STATE_HOME="+home+"/.local/state", "DOCKER_CONFIG="+home+"/.docker")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kiln %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// mkdirChainCPU is the floor for a tree n directories deep: the CPU time
// (user + system, of this thread alone) the kernel takes to create the
// chain one level at a time under dir, as any extractor must. On this
// machine kind it varies tenfold between directories of one ext4 disk
// (0.02 s to 0.45 s at 2000), so a bound in seconds alone measures the
// disk's allocator, not kiln.
func mkdirChainCPU(t *testing.T, dir string, n int) time.Duration {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &before); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := unix.Mkdirat(fd, "dd", 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, "dd", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		fd = next
	}
	unix.Close(fd)
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &after); err != nil {
		t.Fatal(err)
	}
	cpu := func(r unix.Rusage) time.Duration {
		return time.Duration(r.Utime.Nano() + r.Stime.Nano())
	}
	return cpu(after) - cpu(before)
}

// A 10 KB tar with one file nested 2000 directories deep: every directory
// was resolved from the root again for every parent (superlinear: 25 s at
// 1000, past 5 min at 2000). Now an entry costs the components it does not
// share with the previous one, and so do the diff, the layer tar and, on a
// fresh runner, the extraction of that layer.
//
// The bounds are a fixed cost plus a few times the floor (what creating
// the same chain costs the kernel here, measured next to kiln's homes):
// kiln creates the chain once and walks it a few times. Some of the fixed
// cost grows with depth squared and is not kiln's to avoid: the layer's
// 2000 PAX headers hold 6 MB of names, and archive/tar formats each long
// name into a USTAR refusal it then drops. kiln itself used 0.6 s at 2000
// deep on a fast directory and 1.1 s on a slow one, so 1 s was a coin toss;
// the superlinear walk this guards against took minutes.
func TestAddDeepArchive(t *testing.T) {
	host := testenv.Registry(t)
	testenv.Kiln(t) // built before anything is timed
	floor := mkdirChainCPU(t, t.TempDir(), 2000)
	times := []string{fmt.Sprintf("floor: creating a 2000-deep chain costs %v CPU here", floor.Round(10*time.Millisecond))}
	for _, depth := range []int{250, 500, 1000, 2000} {
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nADD deep.tar /x/\n"})
		// 3 bytes a level: 6 KB at 2000, past PATH_MAX.
		name := strings.Repeat("dd/", depth) + "leaf"
		tarOf(t, dir, "deep.tar", []*tar.Header{{Name: name, Typeflag: tar.TypeReg}}, map[string]string{name: "deep\n"})
		ref := host + "/deep:" + strconv.Itoa(depth)
		start := time.Now()
		home := t.TempDir()
		out, cpu := kilnCPU(t, home, dir, "build", "--progress=plain", "--push", "-t", ref, ".")
		wall := time.Since(start)
		add := stepSeconds(t, out, 1)
		if strings.Contains(out, "file name too long") {
			t.Errorf("%d deep: kiln failed to walk what it extracted:\n%.600s", depth, grepLines(out, "too long"))
		}

		// A fresh runner extracts that layer before its COPY can run.
		next := writeContext(t, map[string]string{"Dockerfile": "FROM " + ref + "\nCOPY Dockerfile /\n"})
		out2, cpu2 := kilnCPU(t, t.TempDir(), next, "build", "--progress=plain", "--snapshotter", "overlay", "-o", "type=oci,tar=false,dest="+filepath.Join(t.TempDir(), "oci"), ".")
		times = append(times, fmt.Sprintf("%4d: ADD step %.1fs, build %v wall %v CPU; next build (extracts it) %v CPU, COPY step %.1fs",
			depth, add, wall.Round(10*time.Millisecond), cpu.Round(10*time.Millisecond), cpu2.Round(10*time.Millisecond), stepSeconds(t, out2, 2)))
		if depth == 2000 {
			if bound := 1500*time.Millisecond + 3*floor; cpu >= bound || cpu2 >= bound {
				t.Errorf("2000 deep: ADD build used %v of CPU, the build extracting its layer %v; want each under %v (floor %v)", cpu, cpu2, bound, floor)
			}
			if wall > 20*time.Second {
				t.Errorf("2000 deep: ADD build took %v", wall)
			}
			checkTree(t, testenv.Tree(t, testenv.Pull(t, ref)), map[string]want{
				"x/" + name: {typ: tar.TypeReg, mode: 0o644, content: "deep\n"},
			})
			// kiln's own walks of what it keeps (cache ls, prune) cope too.
			kilnCPU(t, home, dir, "cache", "ls")
			kilnCPU(t, home, dir, "cache", "prune")

			// And COPY --from of that tree, on a fresh runner (old: 25 s
			// at 1000 deep, past PATH_MAX it failed).
			multi := writeContext(t, map[string]string{"Dockerfile": "FROM " + ref + " AS a\nFROM scratch\nCOPY --from=a /x /y\n"})
			oci := filepath.Join(t.TempDir(), "oci")
			out3, cpu3 := kilnCPU(t, t.TempDir(), multi, "build", "--progress=plain", "-o", "type=oci,tar=false,dest="+oci, ".")
			times = append(times, fmt.Sprintf("      COPY --from of it on a fresh runner: %v CPU, COPY step %.1fs", cpu3.Round(10*time.Millisecond), stepSeconds(t, out3, 2)))
			if bound := 2500*time.Millisecond + 4*floor; cpu3 >= bound {
				t.Errorf("COPY --from of the 2000-deep tree used %v of CPU, want under %v (floor %v)", cpu3, bound, floor)
			}
			checkTree(t, treeFromLayout(t, oci), map[string]want{
				"y/" + name: {typ: tar.TypeReg, mode: 0o644, content: "deep\n"},
			})
		}
	}
	t.Logf("depth: time\n%s", strings.Join(times, "\n"))
}

// needGNUTar makes sparse archives as users do, with GNU tar --sparse.
func needGNUTar(t *testing.T) string {
	t.Helper()
	bin := testenv.Need(t, "tar")
	out, _ := exec.Command(bin, "--version").Output()
	if !strings.Contains(string(out), "GNU tar") {
		t.Fatalf("%s is not GNU tar: %s", bin, out)
	}
	return bin
}

// sparseTar makes dir/name, a GNU sparse tar of one file "big" of size
// bytes whose only data is "end\n" at its end.
func sparseTar(t *testing.T, dir, name string, size int64) {
	t.Helper()
	bin := needGNUTar(t)
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end\n"), size-4); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command(bin, "--sparse", "--format=gnu", "-C", src, "-cf", filepath.Join(dir, name), "big").CombinedOutput(); err != nil {
		t.Fatalf("tar --sparse: %v\n%s", err, out)
	}
}

// Archives that expand without bound: a gzip of 1 GiB of zeros (1 MB) and
// a GNU sparse tar of an 8 GiB file (10 KB). Before, both were written out
// in full, into the cache and again into the output.
func TestAddArchiveBombs(t *testing.T) {
	t.Run("gzip 1 MB to 1 GiB", func(t *testing.T) {
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY Dockerfile /\nADD bomb.tar.gz /b/\n"})
		f, err := os.Create(filepath.Join(dir, "bomb.tar.gz"))
		if err != nil {
			t.Fatal(err)
		}
		zw, _ := gzip.NewWriterLevel(f, gzip.DefaultCompression)
		tw := tar.NewWriter(zw)
		tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 30})
		zeros := make([]byte, 1<<20)
		for range 1 << 10 {
			tw.Write(zeros)
		}
		tw.Close()
		zw.Close()
		f.Close()
		fi, _ := os.Stat(f.Name())
		start := time.Now()
		res := testenv.Run(t, dir, nil, "build", "--progress=plain", "-o", "type=local,dest="+filepath.Join(t.TempDir(), "out"), ".")
		took := time.Since(start)
		t.Logf("%d-byte gzip: exit %d after %v", fi.Size(), res.ExitCode, took.Round(time.Millisecond))
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, "Dockerfile:3") || !strings.Contains(res.Stderr, "more than 100 times") {
			t.Errorf("a gzip bomb must fail naming line 3 and the ratio; exit %d:\n%s", res.ExitCode, grepLines(res.Stderr, "ERROR"))
		}
		if took > 20*time.Second {
			t.Errorf("refusing the bomb took %v", took)
		}
	})
	t.Run("sparse 8 GiB", func(t *testing.T) {
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nADD sparse.tar /s/\n"})
		sparseTar(t, dir, "sparse.tar", 8<<30)
		fi, _ := os.Stat(filepath.Join(dir, "sparse.tar"))
		start := time.Now()
		res := testenv.Run(t, dir, nil, "build", "--progress=plain", "-o", "type=local,dest="+filepath.Join(t.TempDir(), "out"), ".")
		took := time.Since(start)
		t.Logf("%d-byte sparse tar of 8 GiB: exit %d after %v", fi.Size(), res.ExitCode, took.Round(time.Millisecond))
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, "Dockerfile:2") || !strings.Contains(res.Stderr, "archive exceeds a limit") {
			t.Errorf("an 8 GiB sparse file from a 10 KB tar must be refused naming line 2; exit %d:\n%s", res.ExitCode, grepLines(res.Stderr, "ERROR"))
		}
		if took > 20*time.Second {
			t.Errorf("refusing it took %v", took)
		}
		if du := diskUsage(t, testenv.Home(t)); du > 64<<20 {
			t.Errorf("kiln's directories hold %d bytes after refusing it", du)
		}
	})
	t.Run("sparse within the limits stays sparse", func(t *testing.T) {
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nADD sparse.tar /s/\n"})
		const size = 48 << 20
		sparseTar(t, dir, "sparse.tar", size)
		oci := filepath.Join(t.TempDir(), "oci")
		kiln(t, dir, nil, "build", "--progress=plain", "--snapshotter", "overlay", "-o", "type=oci,tar=false,dest="+oci, ".")
		tree := treeFromLayout(t, oci)
		if e := tree["s/big"]; len(e.Content) != size || !bytes.HasSuffix(e.Content, []byte("end\n")) {
			t.Errorf("s/big in the image: %d bytes", len(e.Content))
		}
		// The extracted file kiln keeps (the adopted upper dir) is sparse.
		found := false
		filepath.WalkDir(testenv.Home(t), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Name() != "big" || !d.Type().IsRegular() {
				return nil
			}
			var st syscall.Stat_t
			if syscall.Stat(p, &st) == nil && st.Size == size {
				found = true
				if st.Blocks*512 > 1<<20 {
					t.Errorf("%s: %d bytes allocated for a %d-byte file with 4 bytes of data", p, st.Blocks*512, size)
				}
			}
			return nil
		})
		if !found {
			t.Errorf("no extracted s/big under %s", testenv.Home(t))
		}
	})
}

func diskUsage(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) == nil {
			n += st.Blocks * 512
		}
		return nil
	})
	return n
}

// Entries that climb out of the destination are refused as escaping it
// (they were reported as "outside of the build context"), and a symlink an
// archive plants cannot carry later entries out of the root filesystem.
func TestAddArchiveEscape(t *testing.T) {
	for name, hdrs := range map[string][]*tar.Header{
		"dot-dot":          {{Name: "../../../../../../tmp/kiln-escaped", Typeflag: tar.TypeReg}},
		"hardlink dot-dot": {{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../../../etc/passwd"}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nADD evil.tar /x/\n"})
			tarOf(t, dir, "evil.tar", hdrs, nil)
			res := testenv.Run(t, dir, nil, "build", "--progress=plain", ".")
			if res.ExitCode == 0 || !strings.Contains(res.Stderr, "Dockerfile:2") || !strings.Contains(res.Stderr, "escapes the destination") ||
				strings.Contains(res.Stderr, "outside of the build context") {
				t.Errorf("want a failure naming line 2 and \"escapes the destination\"; exit %d:\n%s", res.ExitCode, grepLines(res.Stderr, "ERROR"))
			}
			if _, err := os.Lstat("/tmp/kiln-escaped"); err == nil {
				os.Remove("/tmp/kiln-escaped")
				t.Error("an entry was written outside the root filesystem")
			}
		})
	}
	t.Run("through a planted symlink", func(t *testing.T) {
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nADD evil.tar /x/\n"})
		marker := "kiln-escape-" + strconv.Itoa(os.Getpid())
		tarOf(t, dir, "evil.tar", []*tar.Header{
			{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../../../tmp"},
			{Name: "up/" + marker, Typeflag: tar.TypeReg},
			{Name: "abs", Typeflag: tar.TypeSymlink, Linkname: "/etc"},
			{Name: "abs/" + marker, Typeflag: tar.TypeReg},
		}, map[string]string{"up/" + marker: "1", "abs/" + marker: "2"})
		oci := filepath.Join(t.TempDir(), "oci")
		kiln(t, dir, nil, "build", "--progress=plain", "-o", "type=oci,tar=false,dest="+oci, ".")
		for _, p := range []string{"/tmp/" + marker, "/etc/" + marker} {
			if _, err := os.Lstat(p); err == nil {
				os.Remove(p)
				t.Errorf("%s written on the host", p)
			}
		}
		checkTree(t, treeFromLayout(t, oci), map[string]want{
			"tmp/" + marker: {typ: tar.TypeReg, mode: 0o644, content: "1"},
			"etc/" + marker: {typ: tar.TypeReg, mode: 0o644, content: "2"},
		})
	})
}

// Device nodes and FIFOs in an ADD archive are created as BuildKit does as
// root (containerd's archive.Apply likewise for layers): with their
// numbers, mode and owner; they travel in the layer, and a fresh runner
// extracting that layer creates them again.
func TestAddArchiveDevices(t *testing.T) {
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nADD devs.tar /devs/\n" +
		"RUN stat -c '%n %F %t:%T %a %u:%g' /devs/null /devs/loop0 /devs/pipe > /stat1.txt\n"})
	tarOf(t, dir, "devs.tar", []*tar.Header{
		{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666, Uid: 5, Gid: 6},
		{Name: "loop0", Typeflag: tar.TypeBlock, Devmajor: 7, Devminor: 0, Mode: 0o660},
		{Name: "pipe", Typeflag: tar.TypeFifo, Mode: 0o640},
	}, nil)
	ref := host + "/devs:1"
	kiln(t, dir, nil, "build", "--progress=plain", "--push", "-t", ref, ".")
	want := "/devs/null character special file 1:3 666 5:6\n" +
		"/devs/loop0 block special file 7:0 660 0:0\n" +
		"/devs/pipe fifo 0:0 640 0:0\n"
	img := testenv.Pull(t, ref)
	if got := string(testenv.Tree(t, img)["stat1.txt"].Content); got != want {
		t.Errorf("RUN after ADD saw\n%s\nwant\n%s", got, want)
	}
	layers, _ := img.Layers()
	found := map[string]string{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if strings.HasPrefix(h.Name, "devs/") && h.Typeflag != tar.TypeDir {
				found[h.Name] = fmt.Sprintf("%c %d:%d %o", h.Typeflag, h.Devmajor, h.Devminor, h.Mode)
			}
		}
		rc.Close()
	}
	for name, w := range map[string]string{"devs/null": "3 1:3 666", "devs/loop0": "4 7:0 660", "devs/pipe": "6 0:0 640"} {
		if found[name] != w {
			t.Errorf("layer entry %s = %q, want %q", name, found[name], w)
		}
	}

	// A fresh runner extracts the layer again.
	next := writeContext(t, map[string]string{"Dockerfile": "FROM " + ref + "\n" +
		"RUN stat -c '%n %F %t:%T %a %u:%g' /devs/null /devs/loop0 /devs/pipe > /stat2.txt\n"})
	oci := filepath.Join(t.TempDir(), "oci")
	kilnCPU(t, t.TempDir(), next, "build", "--progress=plain", "-o", "type=oci,tar=false,dest="+oci, ".")
	if got := string(treeFromLayout(t, oci)["stat2.txt"].Content); got != want {
		t.Errorf("a fresh runner saw\n%s\nwant\n%s", got, want)
	}
}

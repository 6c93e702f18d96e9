package cli

import (
	"os"
	"testing"
)

func TestBuildArgFromEnvironment(t *testing.T) {
	t.Setenv("KILN_TEST_SET", "from-env")
	got, err := keyValues("--build-arg", []string{"A=1", "B=", "KILN_TEST_SET", "KILN_TEST_UNSET_XYZ", "C=x=y"}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"A": "1", "B": "", "KILN_TEST_SET": "from-env", "C": "x=y"}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v (an unset bare KEY is dropped, as docker does)", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %q (present %v), want %q", k, g, ok, v)
		}
	}
	if _, err := keyValues("--label", []string{"novalue"}, false); err == nil {
		t.Error("--label without = must be an error")
	}
	if _, err := keyValues("--build-arg", []string{"=v"}, true); err == nil {
		t.Error("--build-arg with an empty key must be an error")
	}
}

func TestSourceDateEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "100")
	got, err := sourceDateEpoch(map[string]string{})
	if err != nil || got == nil || got.Unix() != 100 {
		t.Fatalf("env epoch: %v %v", got, err)
	}
	got, err = sourceDateEpoch(map[string]string{"SOURCE_DATE_EPOCH": "200"})
	if err != nil || got.Unix() != 200 {
		t.Fatalf("--build-arg epoch must win: %v %v", got, err)
	}
	if _, err := sourceDateEpoch(map[string]string{"SOURCE_DATE_EPOCH": "yesterday"}); err == nil {
		t.Error("a non-numeric epoch must be an error")
	}
}

func TestParseSecrets(t *testing.T) {
	t.Setenv("KILN_TEST_TOKEN", "v1")
	file := t.TempDir() + "/s"
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := parseSecrets([]string{"id=a,env=KILN_TEST_TOKEN", "id=b,src=" + file, "id=KILN_TEST_TOKEN", "type=file,id=c,source=" + file})
	if err != nil {
		t.Fatal(err)
	}
	if string(got["a"].Value) != "v1" || got["b"].File != file || string(got["KILN_TEST_TOKEN"].Value) != "v1" || got["c"].File != file {
		t.Errorf("parsed %+v", got)
	}
	for _, bad := range []string{"src=" + file, "id=x,env=KILN_TEST_UNSET_VAR", "id=x,src=/nonexistent", "id=x,type=ssh", "id", "id=x,color=red"} {
		if _, err := parseSecrets([]string{bad}); err == nil {
			t.Errorf("--secret %q: want an error", bad)
		}
	}
}

// --cache-to takes BuildKit's compression options; bad values fail at the
// flag, not after a build; --cache-from ignores them as buildx does.
func TestCacheToCompression(t *testing.T) {
	spec, err := parseCacheSpec("type=registry,ref=r/c:1,compression=gzip,compression-level=9,force-compression=true", true)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Compression != "gzip" || spec.CompressionLevel == nil || *spec.CompressionLevel != 9 || !spec.ForceCompression {
		t.Errorf("parsed %+v", spec)
	}
	spec, err = parseCacheSpec("type=local,dest=/x", true)
	if err != nil || spec.Compression != "" || spec.CompressionLevel != nil || spec.ForceCompression {
		t.Errorf("no options: %+v, %v (want the solver's default, zstd)", spec, err)
	}
	// A level without a compression is a level of the default, zstd.
	if _, err := parseCacheSpec("type=local,dest=/x,compression-level=19", true); err != nil {
		t.Errorf("zstd level 19: %v", err)
	}
	for _, bad := range []string{
		"compression=estargz", "compression=lz4", "compression=",
		"compression=gzip,compression-level=10", "compression-level=23", "compression=uncompressed,compression-level=1",
		"compression-level=-1", "compression-level=fast", "force-compression=maybe",
	} {
		if _, err := parseCacheSpec("type=local,dest=/x,"+bad, true); err == nil {
			t.Errorf("--cache-to ...,%s: accepted", bad)
		}
	}
	if spec, err := parseCacheSpec("type=local,src=/x,compression=gzip", false); err != nil || spec.Compression != "" {
		t.Errorf("--cache-from with compression=: %+v, %v (want it ignored)", spec, err)
	}
}

func TestParseCacheMountMaxSize(t *testing.T) {
	spec, err := parseCacheSpec("type=registry,ref=r/c:1,cache-mount-max-size=512MiB", true)
	if err != nil || spec.MountMaxSize != 512<<20 {
		t.Fatalf("got %d, %v; want 512 MiB", spec.MountMaxSize, err)
	}
	for _, bad := range []string{"cache-mount-max-size=lots", "cache-mount-max-size=0", "cache-mount-max-size=-1G"} {
		if _, err := parseCacheSpec("type=local,dest=/x,"+bad, true); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if _, err := parseCacheSpec("type=local,src=/x,cache-mount-max-size=1G", false); err == nil {
		t.Error("cache-mount-max-size accepted on --cache-from")
	}
}

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

package output

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// dockerHost returns the engine to test against, skipping (or failing
// under CI=true) when none is reachable.
func dockerHost(t *testing.T) string {
	t.Helper()
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	reachable := true
	if strings.HasPrefix(host, "unix://") {
		if _, err := os.Stat(strings.TrimPrefix(host, "unix://")); err != nil {
			reachable = false
		}
	}
	if reachable {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := exec.CommandContext(ctx, "docker", "-H", host, "version").Run(); err != nil {
			reachable = false
		}
	}
	if !reachable {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and no Docker engine at %s", host)
		}
		t.Skipf("no Docker engine at %s", host)
	}
	return host
}

func TestExportDockerLoad(t *testing.T) {
	host := dockerHost(t)
	ctx := context.Background()
	img := mustRandom(t)
	tag := "kiln-output-test:" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	res, err := Export(ctx, Spec{Type: TypeDocker}, Image{Image: img, Tags: []string{tag}}, Env{DockerHost: host})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "-H", host, "image", "rm", "-f", tag).Run() })
	out, err := exec.Command("docker", "-H", host, "image", "inspect", tag).Output()
	if err != nil {
		t.Fatalf("docker image inspect %s: %v", tag, err)
	}
	var inspect []struct {
		ID       string   `json:"Id"`
		RepoTags []string `json:"RepoTags"`
	}
	if err := json.Unmarshal(out, &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("inspect output %s: %v", out, err)
	}
	// The classic store names images by config digest, the containerd
	// store by manifest digest; either proves the right image arrived.
	if id := inspect[0].ID; id != res.ConfigDigest.String() && id != res.Digest.String() {
		t.Errorf("loaded image ID %s, want %s or %s", id, res.ConfigDigest, res.Digest)
	}
}

func TestExportDockerLoadUnavailable(t *testing.T) {
	_, err := Export(context.Background(), Spec{Type: TypeDocker}, Image{Image: mustRandom(t), Tags: []string{"x:y"}},
		Env{DockerHost: "unix://" + t.TempDir() + "/no.sock"})
	if !errors.Is(err, ErrDockerUnavailable) {
		t.Errorf("err = %v, want ErrDockerUnavailable", err)
	}
}

package testenv

import (
	"net"
	"net/url"
	"strings"
	"testing"
)

// MinIO listens on loopback only, and its buckets start empty and apart.
func TestMinIO(t *testing.T) {
	m := MinIO(t)
	u, err := url.Parse(m.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := net.SplitHostPort(u.Host); err != nil || h != "127.0.0.1" {
		t.Fatalf("Endpoint = %q, want http://127.0.0.1:PORT", m.Endpoint)
	}
	a, b := m.Bucket(t), m.Bucket(t)
	if a == b {
		t.Fatalf("two buckets named %s", a)
	}
	if keys := m.Keys(t, a, ""); len(keys) != 0 {
		t.Errorf("new bucket %s holds %v", a, keys)
	}
	env := map[string]bool{}
	for _, kv := range m.Env() {
		k, _, _ := strings.Cut(kv, "=")
		env[k] = true
	}
	for _, k := range []string{"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		if !env[k] {
			t.Errorf("Env() lacks %s", k)
		}
	}
}

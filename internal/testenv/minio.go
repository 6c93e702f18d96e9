package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// MinIOServer is a real MinIO server started by MinIO for one test.
type MinIOServer struct {
	// Endpoint is "http://127.0.0.1:PORT".
	Endpoint string
	// AccessKey and SecretKey are its root credentials.
	AccessKey, SecretKey string
}

// minioRegion is the region MinIO answers as unless configured otherwise.
const minioRegion = "us-east-1"

// MinIO starts the real MinIO server (`minio` on PATH) on 127.0.0.1 with a
// free port, random root credentials and its data in a temporary
// directory, waits until it is live, and stops it in t.Cleanup. Its log is
// printed only if the test failed.
func MinIO(t testing.TB) *MinIOServer {
	t.Helper()
	bin := Need(t, "minio")
	dir := t.TempDir()
	var lastErr error
	for attempt := 1; attempt <= registryAttempts; attempt++ {
		m, err := startMinIO(t, bin, dir, attempt)
		if err == nil {
			return m
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
	}
	t.Fatalf("testenv: start minio: %v", lastErr)
	return nil
}

func startMinIO(t testing.TB, bin, dir string, attempt int) (*MinIOServer, error) {
	t.Helper()
	port, err := pickPort()
	if err != nil {
		return nil, err
	}
	consolePort, err := pickPort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	data := filepath.Join(dir, fmt.Sprintf("data-%d", attempt))
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, fmt.Errorf("create minio data dir: %w", err)
	}
	logPath := filepath.Join(dir, fmt.Sprintf("minio-%d.log", attempt))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create minio log: %w", err)
	}
	m := &MinIOServer{Endpoint: "http://" + addr, AccessKey: "kiln" + randomHex(6), SecretKey: randomHex(20)}
	cmd := exec.Command(bin, "server", "--quiet", "--address", addr,
		"--console-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(consolePort)), data)
	// A clean environment, as for the registry: MINIO_* variables from the
	// host would override what the test asked for. No console, no update
	// check: nothing but loopback traffic.
	cmd.Env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + dir,
		"MINIO_ROOT_USER=" + m.AccessKey,
		"MINIO_ROOT_PASSWORD=" + m.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		logFile.Close()
	}
	if err := waitMinIO(t.Context(), addr, exited, &waitErr); err != nil {
		stop()
		log, _ := os.ReadFile(logPath)
		if bytes.Contains(log, []byte("address already in use")) {
			return nil, fmt.Errorf("%s: %w", addr, errPortTaken)
		}
		return nil, fmt.Errorf("%w\nminio log:\n%s", err, log)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("testenv: minio %s log:\n%s", addr, log)
		}
	})
	return m, nil
}

// waitMinIO polls MinIO's readiness endpoint (liveness answers before its
// store is ready, when S3 calls still fail) until it answers 200, the
// process exits, or the start timeout passes.
func waitMinIO(ctx context.Context, addr string, exited <-chan struct{}, waitErr *error) error {
	ctx, cancel := context.WithTimeout(ctx, registryStartTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	url := "http://" + addr + "/minio/health/ready"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("minio exited before answering on %s: %v", addr, *waitErr)
		case <-ctx.Done():
			return fmt.Errorf("minio did not answer GET %s: %w", url, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Env is the AWS settings that point an S3 client (kiln cache serve
// --storage s3://...) at this server, as KEY=VALUE.
func (m *MinIOServer) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL=" + m.Endpoint,
		"AWS_REGION=" + minioRegion,
		"AWS_ACCESS_KEY_ID=" + m.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + m.SecretKey,
		// Never ask an instance-metadata address for credentials.
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Setenv sets Env in the test process for the rest of the test, for
// servers the test runs in-process.
func (m *MinIOServer) Setenv(t testing.TB) {
	t.Helper()
	for _, kv := range m.Env() {
		k, v, _ := bytes.Cut([]byte(kv), []byte("="))
		t.Setenv(string(k), string(v))
	}
}

func (m *MinIOServer) client(t testing.TB) *s3.S3 {
	t.Helper()
	// A client of its own: with AWS_CA_BUNDLE set, the SDK installs the
	// bundle into the config's HTTP client, by default http.DefaultClient,
	// while the servers under test may be using it.
	sess, err := session.NewSession(aws.NewConfig().
		WithHTTPClient(&http.Client{}).
		WithEndpoint(m.Endpoint).
		WithRegion(minioRegion).
		WithS3ForcePathStyle(true).
		WithCredentials(credentials.NewStaticCredentials(m.AccessKey, m.SecretKey, "")))
	if err != nil {
		t.Fatalf("testenv: minio client: %v", err)
	}
	return s3.New(sess)
}

// Bucket creates a new, empty bucket and returns its name.
func (m *MinIOServer) Bucket(t testing.TB) string {
	t.Helper()
	name := "kiln-" + randomHex(6)
	if _, err := m.client(t).CreateBucketWithContext(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("testenv: create bucket %s: %v", name, err)
	}
	return name
}

// Keys lists the keys in bucket that start with prefix.
func (m *MinIOServer) Keys(t testing.TB, bucket, prefix string) []string {
	t.Helper()
	var keys []string
	for _, o := range m.Objects(t, bucket, prefix) {
		keys = append(keys, o.Key)
	}
	return keys
}

// Object is a key in a bucket and the size of its object.
type Object struct {
	Key  string
	Size int64
}

// Objects lists the objects in bucket whose keys start with prefix, in
// key order.
func (m *MinIOServer) Objects(t testing.TB, bucket, prefix string) []Object {
	t.Helper()
	var out []Object
	err := m.client(t).ListObjectsV2PagesWithContext(t.Context(),
		&s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)},
		func(page *s3.ListObjectsV2Output, _ bool) bool {
			for _, o := range page.Contents {
				out = append(out, Object{Key: aws.StringValue(o.Key), Size: aws.Int64Value(o.Size)})
			}
			return true
		})
	if err != nil {
		t.Fatalf("testenv: list %s/%s: %v", bucket, prefix, err)
	}
	return out
}

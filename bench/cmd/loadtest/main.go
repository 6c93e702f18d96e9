// Command loadtest drives a registry on loopback with concurrent clients
// that push images (monolithic and chunked blob uploads, then manifests)
// and read back random blobs and manifests, verifying every byte against
// its digest. It reports errors, corrupted reads, throughput and the
// server's peak resident memory, and exits 1 if any request failed or any
// read was corrupt.
//
//	loadtest -url http://127.0.0.1:5000 -clients 32 -duration 60s -pid $(pgrep ...) -json out.json
//
// The password for -user is read from LOADTEST_PASSWORD, so it stays out
// of the process list. bench/loadtest.sh runs it against kiln cache serve
// and Debian's docker-registry in one run.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	var cfg config
	var jsonOut, label string
	flag.StringVar(&cfg.URL, "url", "", "registry base URL on loopback, e.g. http://127.0.0.1:5000 (required)")
	flag.IntVar(&cfg.Clients, "clients", 32, "concurrent clients")
	flag.DurationVar(&cfg.Duration, "duration", 60*time.Second, "how long clients start new operations")
	flag.IntVar(&cfg.PID, "pid", 0, "server process id whose resident memory is sampled (0: not measured)")
	flag.StringVar(&cfg.User, "user", "", "basic-auth user (password from LOADTEST_PASSWORD)")
	flag.IntVar(&cfg.Repos, "repos", 8, "repositories the clients spread over")
	flag.Int64Var(&cfg.MinBlob, "min-blob", 1<<10, "smallest blob, bytes")
	flag.Int64Var(&cfg.MaxBlob, "max-blob", 4<<20, "largest blob, bytes (sizes are log-uniform between)")
	flag.Uint64Var(&cfg.Seed, "seed", uint64(time.Now().UnixNano()), "random seed")
	flag.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	flag.StringVar(&label, "label", "", "name printed with the result")
	flag.Parse()
	cfg.Password = os.Getenv("LOADTEST_PASSWORD")
	if err := loopbackOnly(cfg.URL); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(2)
	}
	fmt.Println(summary(label, res))
	for _, e := range res.FirstErrors {
		fmt.Println("  error:", e)
	}
	if jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
			os.Exit(2)
		}
	}
	if res.Errors > 0 || res.Corrupted > 0 {
		os.Exit(1)
	}
}

// loopbackOnly refuses a URL that is not http on a loopback address: a
// load test pointed at a shared registry by mistake would hurt it.
func loopbackOnly(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("-url %q: want http://127.0.0.1:PORT", raw)
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-url %q: not a loopback address; this tool only loads a server on this machine", raw)
	}
	return nil
}

func summary(label string, r result) string {
	s := fmt.Sprintf("%s%d clients %.0fs: %.1f MB/s, %.0f req/s, %d requests, %d blobs pushed (%d chunked), %d manifests, %d blobs and %d manifests read back and verified, %d errors, %d corrupted",
		prefix(label), r.Clients, r.Seconds, r.MBPerSecond, r.ReqPerSecond, r.Requests, r.BlobsPushed, r.ChunkedPushes, r.Manifests, r.BlobsVerified, r.ManifestsRead, r.Errors, r.Corrupted)
	if r.PeakRSSBytes > 0 {
		s += fmt.Sprintf(", server peak RSS %.0f MiB (VmHWM %.0f MiB)", float64(r.PeakRSSBytes)/(1<<20), float64(r.ServerHWMBytes)/(1<<20))
	}
	return s + fmt.Sprintf(", load %.2f", r.Load1)
}

func prefix(label string) string {
	if label == "" {
		return ""
	}
	return label + ": "
}

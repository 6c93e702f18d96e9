package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/internal/cacheserver"
)

// newCmdCacheServe returns `kiln cache serve`, a registry for build caches
// next to the runners.
func newCmdCacheServe() *cobra.Command {
	var cfg cacheserver.Config
	var maxSize, storage, secretFile string
	var upstreams, access []string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve an OCI registry for build caches and images (CNCF distribution) from a directory or an S3 bucket",
		Long: "kiln cache serve runs CNCF distribution's registry over a directory (--root) or an\n" +
			"S3 bucket (--storage s3://BUCKET/PREFIX), for use as\n" +
			"--cache-to/--cache-from type=registry and as an ordinary push/pull registry.\n" +
			"It logs one JSON line per request to stderr, answers GET /healthz, and on\n" +
			"SIGINT or SIGTERM stops accepting and lets in-flight requests finish.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if maxSize != "" {
				n, err := parseSize(maxSize)
				if err != nil {
					return fmt.Errorf("--max-size: %w", err)
				}
				cfg.MaxSize = n
			}
			if storage != "" {
				s3, err := cacheserver.ParseS3(storage, os.Getenv)
				if err != nil {
					return fmt.Errorf("--storage: %w", err)
				}
				cfg.S3 = s3
			}
			if secretFile != "" {
				b, err := os.ReadFile(secretFile)
				if err != nil {
					return fmt.Errorf("--upload-secret-file: %w", err)
				}
				cfg.UploadSecret = strings.TrimSpace(string(b))
				if cfg.UploadSecret == "" {
					return fmt.Errorf("--upload-secret-file: %s is empty", secretFile)
				}
			}
			for _, u := range upstreams {
				up, err := cacheserver.ParseUpstream(u)
				if err != nil {
					return fmt.Errorf("--upstream: %w", err)
				}
				cfg.Upstreams = append(cfg.Upstreams, up)
			}
			for _, a := range access {
				user, grants, err := cacheserver.ParseAccess(a)
				if err != nil {
					return fmt.Errorf("--access: %w", err)
				}
				if _, dup := cfg.Access[user]; dup {
					return fmt.Errorf("--access: user %q given twice; list all its prefixes in one --access", user)
				}
				if cfg.Access == nil {
					cfg.Access = map[string][]cacheserver.RepoAccess{}
				}
				cfg.Access[user] = grants
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			cfg.Log = slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil))
			return serve(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "addr", "127.0.0.1:5000", "address to listen on (host:port)")
	f.StringVar(&cfg.Root, "root", "", "directory that holds the store")
	f.StringVar(&storage, "storage", "", "s3://BUCKET/PREFIX: keep the store in an S3 bucket instead of --root (endpoint, region and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
	f.StringVar(&cfg.Htpasswd, "htpasswd", "", "htpasswd file (bcrypt) of the users allowed in")
	f.StringArrayVar(&cfg.ReadOnly, "read-only-user", nil, "an --htpasswd user who may pull but not push or delete (repeatable)")
	f.StringArrayVar(&access, "access", nil, "USER=MODE:PREFIX,...: limit an --htpasswd user to the repositories under these prefixes, MODE ro (pull) or rw (pull, push, delete), e.g. ci=rw:team-a/,ro:base/ (repeatable)")
	f.BoolVar(&cfg.InsecureNoAuth, "insecure-no-auth", false, "allow a non-loopback --addr without --htpasswd")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "TLS certificate (PEM) to serve HTTPS with")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "TLS private key (PEM) for --tls-cert")
	f.StringVar(&maxSize, "max-size", "", "bound the store's bytes (e.g. 50GB); least recently used images go first")
	f.DurationVar(&cfg.MaxAge, "max-age", 0, "remove images unused for longer than this (e.g. 168h)")
	f.DurationVar(&cfg.EvictGrace, "evict-grace", cacheserver.DefaultEvictGrace, "nothing used more recently than this is evicted; longer than the longest push, and the same on every server of one bucket")
	f.DurationVar(&cfg.EvictInterval, "evict-interval", cacheserver.DefaultEvictInterval, "time between eviction sweeps")
	f.StringVar(&secretFile, "upload-secret-file", "", "file holding the secret that signs upload sessions, shared by servers behind one load balancer (at least 32 bytes; default: random per server)")
	f.StringArrayVar(&upstreams, "upstream", nil, "PREFIX=URL: mirror a registry read-only under PREFIX/ (repeatable), e.g. docker.io=https://registry-1.docker.io")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cacheserver.DefaultShutdownTimeout, "how long a shutdown waits for in-flight requests")
	cmd.MarkFlagsOneRequired("root", "storage")
	cmd.MarkFlagsMutuallyExclusive("root", "storage")
	return cmd
}

func serve(ctx context.Context, cfg cacheserver.Config) error {
	srv, err := cacheserver.New(ctx, cfg)
	if err != nil {
		return err
	}
	ln, err := srv.Listen()
	if err != nil {
		return err
	}
	return srv.Serve(ctx, ln)
}

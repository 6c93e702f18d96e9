package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/internal/gc"
	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/output"
	"github.com/kiln-build/kiln/internal/progress"
	"github.com/kiln-build/kiln/internal/registry"
	"github.com/kiln-build/kiln/internal/solver"
)

// buildFlags are `kiln build`'s flags, named as `docker buildx build` names
// them.
type buildFlags struct {
	file         string
	tags         []string
	target       string
	buildArgs    []string
	labels       []string
	platform     string
	noCache      bool
	parallelism  int
	parallelSet  bool // --parallelism given: only then is it a cap
	push         bool
	load         bool
	outputs      []string
	metadataFile string
	iidFile      string
	progress     string
	insecure     []string
	secrets      []string
	ssh          []string
	isolation    string
	snapshotter  string
	network      string
	allow        []string
	cacheFrom    []string
	cacheTo      []string
	noCacheFilt  []string
	report       string
	maxCacheSize string
	dryRun       bool
}

func (f *buildFlags) addFlags(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "file", "f", "", `Name of the Dockerfile (default: "CONTEXT/Dockerfile"; "-" reads standard input)`)
	fl.StringArrayVarP(&f.tags, "tag", "t", nil, `Image name and optionally a tag (format: "name:tag")`)
	fl.StringVar(&f.target, "target", "", "Target build stage to build")
	fl.StringArrayVar(&f.buildArgs, "build-arg", nil, "Set build-time variables (KEY=VALUE, or KEY to take the value from the environment)")
	fl.StringArrayVar(&f.labels, "label", nil, "Set metadata for an image (KEY=VALUE)")
	fl.StringVar(&f.platform, "platform", "", "Set target platforms for build (linux/amd64,linux/arm64)")
	fl.BoolVar(&f.noCache, "no-cache", false, "Do not use cache when building the image")
	fl.IntVar(&f.parallelism, "parallelism", 0, "Maximum number of stages built at once (default: every stage whose dependencies are built, as in BuildKit)")
	fl.BoolVar(&f.push, "push", false, `Shorthand for "--output=type=registry"`)
	fl.BoolVar(&f.load, "load", false, `Shorthand for "--output=type=docker"`)
	fl.StringArrayVarP(&f.outputs, "output", "o", nil, `Output destination (format: "type=local,dest=path")`)
	fl.StringVar(&f.metadataFile, "metadata-file", "", "Write build result metadata to a file")
	fl.StringVar(&f.iidFile, "iidfile", "", "Write the image ID to a file")
	fl.StringVar(&f.progress, "progress", "auto", `Set type of progress output ("auto", "plain", "tty", "quiet")`)
	fl.StringArrayVar(&f.insecure, "insecure-registry", nil, "Registry HOST[:PORT] to reach over plain HTTP (repeatable)")
	fl.StringArrayVar(&f.secrets, "secret", nil, `Secret to expose to RUN --mount=type=secret (format: "id=mysecret[,src=/local/secret]" or "id=mysecret,env=VAR")`)
	fl.StringArrayVar(&f.ssh, "ssh", nil, "SSH agent socket or keys to expose to RUN --mount=type=ssh: default|ID[=SOCKET|KEY[,KEY...]] (repeatable)")
	fl.StringVar(&f.isolation, "isolation", "auto", `How RUN is isolated: "auto" (runc when installed, else chroot), "chroot", "runc"`)
	fl.StringVar(&f.snapshotter, "snapshotter", "auto", `How root filesystems are made: "auto" (overlay where possible), "overlay", "copy"`)
	fl.StringVar(&f.network, "network", "default", `Networking mode for RUN instructions: "default" (the host's), "host", "none"`)
	fl.StringSliceVar(&f.allow, "allow", nil, `Allow extra privileged entitlement: "security.insecure" (RUN --security=insecure), "network.host" (always allowed here)`)
	fl.StringArrayVar(&f.cacheFrom, "cache-from", nil, `External cache sources, tried in order (e.g., "type=registry,ref=user/app:cache", "type=local,src=path/to/dir")`)
	fl.StringArrayVar(&f.cacheTo, "cache-to", nil, `Cache export destinations (e.g., "type=registry,ref=user/app:cache,mode=max", "type=local,dest=path/to/dir")`)
	fl.StringArrayVar(&f.noCacheFilt, "no-cache-filter", nil, "Do not use the cache for the specified stages")
	fl.StringVar(&f.maxCacheSize, "max-cache-size", "", "Bound on kiln's directory, kept after every build by removing the least recently used (e.g. 20GB; 0: no bound; default: $KILN_MAX_CACHE_SIZE, else 10% of the filesystem, at most 20GB)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "Print the build plan (each step: hit and where, or miss and why) and exit without running, writing or pushing anything")
	fl.StringVar(&f.report, "report", "", "Write the build summary (each step: cached or built, duration, bytes moved, why it missed) to a JSON file")
}

// NewCmdBuild returns `kiln build`.
func NewCmdBuild() *cobra.Command {
	f := &buildFlags{}
	cmd := &cobra.Command{
		Use:   "build [OPTIONS] CONTEXT",
		Short: "Build an image from a Dockerfile",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBuild(cmd, f, args[0])
		},
	}
	f.addFlags(cmd)
	return cmd
}

func runBuild(cmd *cobra.Command, f *buildFlags, contextDir string) error {
	f.parallelSet = cmd.Flags().Changed("parallelism")
	opts, err := f.options(cmd.InOrStdin(), contextDir)
	if err != nil {
		return err
	}
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	switch f.progress {
	case "quiet":
		opts.Progress = progress.Discard
	case "plain":
		opts.Progress = progress.Plain(stderr)
	case "tty":
		opts.Progress = progress.TTY(stderr)
	case "auto", "":
		if isTerminal(stderr) {
			opts.Progress = progress.TTY(stderr)
		} else {
			opts.Progress = progress.Plain(stderr)
		}
	default:
		return fmt.Errorf("--progress=%s: must be auto, plain, tty or quiet", f.progress)
	}
	limit, err := f.cacheBound(opts.CacheDir)
	if err != nil {
		return err
	}
	if f.dryRun {
		return dryRun(cmd, f, opts)
	}
	res, err := solver.Build(cmd.Context(), opts)
	// Bounded after every build, a failed one too: it may have left
	// layers and snapshots behind.
	if limit > 0 {
		if _, gerr := (solver.Disk{Root: opts.CacheDir}).Collect(cmd.Context(), gc.Policy{MaxSize: limit, Superseded: true}); gerr != nil {
			fmt.Fprintf(stderr, "warning: trimming kiln's directory to %s: %v\n", sizeString(limit), gerr)
		}
	}
	if err != nil {
		// A CI user wants the report most when the build failed.
		if f.report != "" && res != nil {
			if werr := writeJSON(f.report, report(res)); werr != nil {
				return fmt.Errorf("%w (and --report: %v)", err, werr)
			}
		}
		return err
	}
	if f.metadataFile != "" {
		if err := writeMetadata(f.metadataFile, res); err != nil {
			return err
		}
	}
	if f.report != "" {
		if err := writeJSON(f.report, report(res)); err != nil {
			return fmt.Errorf("--report: %w", err)
		}
	}
	if f.iidFile != "" {
		// buildx writes the config digest (the image ID) when it has one.
		if err := os.WriteFile(f.iidFile, []byte(res.ConfigDigest.String()), 0o644); err != nil {
			return fmt.Errorf("--iidfile: %w", err)
		}
	}
	if f.progress == "quiet" {
		fmt.Fprintln(stdout, res.Digest)
		return nil
	}
	names := ""
	if len(res.Names) > 0 {
		names = " as " + strings.Join(res.Names, ", ")
	}
	fmt.Fprintf(stdout, "%s %d bytes%s\n", res.Digest, res.Size, names)
	return nil
}

// dryRun prints the plan of a build and runs nothing. It reads (the
// context, cache indexes, base image manifests) and writes only what the
// user asked for by name (--report), nor trims kiln's directory.
func dryRun(cmd *cobra.Command, f *buildFlags, opts solver.Options) error {
	opts.DryRun = true
	res, err := solver.Build(cmd.Context(), opts)
	if err != nil {
		return err
	}
	if f.report != "" {
		if err := writeJSON(f.report, report(res)); err != nil {
			return fmt.Errorf("--report: %w", err)
		}
	}
	return res.Plan.Text(cmd.OutOrStdout())
}

// options turns flags into build options, reading the Dockerfile and
// SOURCE_DATE_EPOCH at this edge so the build itself sees only values.
func (f *buildFlags) options(stdin io.Reader, contextDir string) (solver.Options, error) {
	o := solver.Options{
		ContextDir:  contextDir,
		Target:      f.target,
		NoCache:     f.noCache,
		Parallelism: f.parallelism,
		Tags:        f.tags,
		DockerHost:  os.Getenv("DOCKER_HOST"),
		Registry:    registry.Options{Insecure: f.insecure},
	}
	// Unset, the build runs every ready stage; given, it must be a real
	// cap: 0 or less would otherwise silently mean "unbounded".
	if f.parallelSet && f.parallelism < 1 {
		return o, fmt.Errorf("--parallelism=%d: must be at least 1 (the number of stages built at once)", f.parallelism)
	}
	if st, err := os.Stat(contextDir); err != nil || !st.IsDir() {
		return o, fmt.Errorf("build context %q: not a directory", contextDir)
	}
	var err error
	switch f.file {
	case "-":
		o.DockerfileName = "Dockerfile"
		if o.Dockerfile, err = io.ReadAll(stdin); err != nil {
			return o, fmt.Errorf("read Dockerfile from standard input: %w", err)
		}
	default:
		path := f.file
		if path == "" {
			path = filepath.Join(contextDir, "Dockerfile")
		}
		if o.Dockerfile, err = os.ReadFile(path); err != nil {
			return o, fmt.Errorf("read Dockerfile: %w", err)
		}
		o.DockerfileName = filepath.Base(path)
		o.DockerfilePath = path
	}
	if o.BuildArgs, err = keyValues("--build-arg", f.buildArgs, true); err != nil {
		return o, err
	}
	if o.Labels, err = keyValues("--label", f.labels, false); err != nil {
		return o, err
	}
	if f.platform != "" {
		// buildx's list: "linux/amd64,linux/arm64" builds both.
		for _, v := range strings.Split(f.platform, ",") {
			p, err := solver.ParsePlatform(strings.TrimSpace(v))
			if err != nil {
				return o, fmt.Errorf("--platform=%s: %w", f.platform, err)
			}
			o.Platforms = append(o.Platforms, p)
		}
	}
	if o.Epoch, err = sourceDateEpoch(o.BuildArgs); err != nil {
		return o, err
	}
	outs := append([]string(nil), f.outputs...)
	if f.push {
		outs = append(outs, "type=registry")
	}
	if f.load {
		outs = append(outs, "type=docker")
	}
	for _, s := range outs {
		spec, err := output.Parse(s)
		if err != nil {
			return o, fmt.Errorf("--output=%s: %w", s, err)
		}
		o.Outputs = append(o.Outputs, spec)
	}
	cache, err := cacheDir()
	if err != nil {
		return o, err
	}
	o.CacheDir = cache
	o.StoreDir = filepath.Join(cache, "images")
	if o.SSH, err = parseSSH(f.ssh, os.Getenv("SSH_AUTH_SOCK")); err != nil {
		return o, err
	}
	switch f.isolation {
	case "auto", "chroot", "runc":
		o.Isolation = f.isolation
	default:
		return o, fmt.Errorf("--isolation=%s: must be auto, chroot or runc", f.isolation)
	}
	switch f.snapshotter {
	case "auto", "overlay", "copy":
		o.Snapshotter = f.snapshotter
	default:
		return o, fmt.Errorf("--snapshotter=%s: must be auto, overlay or copy", f.snapshotter)
	}
	switch f.network {
	case "default", "host", "none":
		o.Network = f.network
	default:
		return o, fmt.Errorf("--network=%s: must be default, host or none", f.network)
	}
	for _, e := range f.allow {
		switch strings.TrimSpace(e) {
		case "security.insecure":
			o.AllowInsecure = true
		case "network.host":
			// RUN --network=host needs no entitlement in kiln, which
			// runs RUN in the host's network by default.
		default:
			return o, fmt.Errorf("--allow=%s: invalid entitlement (security.insecure or network.host)", e)
		}
	}
	if o.Secrets, err = parseSecrets(f.secrets); err != nil {
		return o, err
	}
	for _, v := range f.noCacheFilt {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(strings.ToLower(name)); name != "" {
				o.NoCacheFilter = append(o.NoCacheFilter, name)
			}
		}
	}
	for _, v := range f.cacheFrom {
		spec, err := parseCacheSpec(v, false)
		if err != nil {
			return o, fmt.Errorf("--cache-from %s: %w", v, err)
		}
		o.CacheFrom = append(o.CacheFrom, spec)
	}
	for _, v := range f.cacheTo {
		spec, err := parseCacheSpec(v, true)
		if err != nil {
			return o, fmt.Errorf("--cache-to %s: %w", v, err)
		}
		o.CacheTo = append(o.CacheTo, spec)
	}
	return o, nil
}

// parseCacheSpec reads buildx's --cache-from/--cache-to syntax. A value
// without "=" is a registry reference, as buildx takes it.
func parseCacheSpec(v string, to bool) (solver.CacheSpec, error) {
	spec := solver.CacheSpec{Mode: "max"}
	if !strings.Contains(v, "=") {
		spec.Type, spec.Ref = "registry", v
		return spec, nil
	}
	for _, field := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(field, "=")
		if !ok {
			return spec, fmt.Errorf("%q: expected key=value", field)
		}
		var err error
		switch k {
		case "type":
			spec.Type = val
		case "ref":
			spec.Ref = val
		case "src":
			if to {
				return spec, fmt.Errorf("src= belongs to --cache-from; use dest=")
			}
			spec.Dir = val
		case "dest":
			if !to {
				return spec, fmt.Errorf("dest= belongs to --cache-to; use src=")
			}
			spec.Dir = val
		case "mode":
			if val != "min" && val != "max" {
				return spec, fmt.Errorf("mode=%s: must be min or max", val)
			}
			spec.Mode = val
		case "ignore-error":
			if spec.IgnoreError, err = strconv.ParseBool(val); err != nil {
				return spec, fmt.Errorf("ignore-error=%s: %w", val, err)
			}
		case "max-age":
			if spec.MaxAge, err = parseAge(val); err != nil {
				return spec, fmt.Errorf("max-age=%s: %w", val, err)
			}
		case "max-entries":
			if spec.MaxEntries, err = strconv.Atoi(val); err != nil || spec.MaxEntries < 0 {
				return spec, fmt.Errorf("max-entries=%s: must be a whole number", val)
			}
		case "compression", "compression-level", "force-compression":
			// BuildKit's cache compression: for the blobs only the cache
			// holds (zstd by default in kiln, gzip in BuildKit); on
			// --cache-from they mean nothing, as in buildx.
			if !to {
				continue
			}
			if err := parseCacheCompression(&spec, k, val); err != nil {
				return spec, err
			}
		case "cache-mount-max-size":
			if !to {
				return spec, fmt.Errorf("cache-mount-max-size= belongs to --cache-to")
			}
			if spec.MountMaxSize, err = parseSize(val); err != nil || spec.MountMaxSize <= 0 {
				return spec, fmt.Errorf("cache-mount-max-size=%s: want a size such as 2GiB", val)
			}
		case "oci-mediatypes", "image-manifest":
			// The cache manifest is always a standard OCI image manifest.
		default:
			return spec, fmt.Errorf("unknown option %q", k)
		}
	}
	if spec.CompressionLevel != nil {
		c, _ := image.ParseCompression(spec.Compression)
		if spec.Compression == "" {
			c = image.Zstd
		}
		if n := *spec.CompressionLevel; n > c.MaxLevel() {
			return spec, fmt.Errorf("compression-level=%d is out of range for %s (0-%d)", n, c, c.MaxLevel())
		}
	}
	switch spec.Type {
	case "registry":
		if spec.Ref == "" {
			return spec, fmt.Errorf("type=registry needs ref=")
		}
	case "local":
		if spec.Dir == "" {
			return spec, fmt.Errorf("type=local needs %s", map[bool]string{true: "dest=", false: "src="}[to])
		}
	case "":
		return spec, fmt.Errorf("type= is required (registry or local)")
	default:
		return spec, fmt.Errorf("type=%s: only registry and local are supported", spec.Type)
	}
	return spec, nil
}

// parseCacheCompression reads --cache-to's compression, compression-level
// and force-compression, with BuildKit's names and values.
func parseCacheCompression(spec *solver.CacheSpec, k, val string) error {
	switch k {
	case "compression":
		if val == "estargz" {
			return fmt.Errorf("compression=estargz is not supported (gzip, zstd or uncompressed)")
		}
		c, err := image.ParseCompression(val)
		if err != nil || val == "" {
			return fmt.Errorf("compression=%s: want gzip, zstd or uncompressed", val)
		}
		spec.Compression = string(c)
	case "compression-level":
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 {
			return fmt.Errorf("compression-level=%s: not a non-negative integer", val)
		}
		spec.CompressionLevel = &n
	case "force-compression":
		v, err := strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("force-compression=%s: %w", val, err)
		}
		spec.ForceCompression = v
	}
	return nil
}

// parseAge accepts Go durations and a day suffix ("7d").
func parseAge(v string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("want a duration such as 72h or 7d")
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(v)
}

// parseSecrets reads --secret flags with buildx's syntax. Values from the
// environment are read here, at the edge; files are read when a RUN mounts
// them. Nothing here ever prints a value.
func parseSecrets(flags []string) (map[string]solver.Secret, error) {
	out := map[string]solver.Secret{}
	for _, fl := range flags {
		var id, typ, src, env string
		for _, field := range strings.Split(fl, ",") {
			k, v, ok := strings.Cut(field, "=")
			if !ok {
				return nil, fmt.Errorf("--secret %q: expected key=value fields", fl)
			}
			switch strings.ToLower(k) {
			case "id":
				id = v
			case "type":
				typ = v
			case "src", "source":
				src = v
			case "env":
				env = v
			default:
				return nil, fmt.Errorf("--secret %q: unknown key %q", fl, k)
			}
		}
		if id == "" {
			return nil, fmt.Errorf("--secret %q: id is required", fl)
		}
		switch {
		case typ == "env" || env != "":
			if env == "" {
				env = id
			}
			v, ok := os.LookupEnv(env)
			if !ok {
				return nil, fmt.Errorf("--secret id=%s: environment variable %s is not set", id, env)
			}
			out[id] = solver.Secret{Value: []byte(v)}
		case typ == "file" || src != "":
			if src == "" {
				src = id
			}
			if _, err := os.Stat(src); err != nil {
				return nil, fmt.Errorf("--secret id=%s: %w", id, err)
			}
			out[id] = solver.Secret{File: src}
		case typ == "":
			if v, ok := os.LookupEnv(id); ok {
				out[id] = solver.Secret{Value: []byte(v)}
			} else if _, err := os.Stat(id); err == nil {
				out[id] = solver.Secret{File: id}
			} else {
				return nil, fmt.Errorf("--secret id=%s: no src= or env= given, and no environment variable or file of that name", id)
			}
		default:
			return nil, fmt.Errorf("--secret %q: type must be file or env", fl)
		}
	}
	return out, nil
}

// keyValues parses repeated KEY=VALUE flags. For --build-arg a bare KEY
// takes its value from the environment, and is dropped when unset, as
// docker does.
func keyValues(flag string, vals []string, fromEnv bool) (map[string]string, error) {
	m := map[string]string{}
	for _, kv := range vals {
		k, v, ok := strings.Cut(kv, "=")
		if k == "" {
			return nil, fmt.Errorf("%s %q: expected KEY=VALUE", flag, kv)
		}
		if !ok {
			if !fromEnv {
				return nil, fmt.Errorf("%s %q: expected KEY=VALUE", flag, kv)
			}
			env, set := os.LookupEnv(k)
			if !set {
				continue
			}
			v = env
		}
		m[k] = v
	}
	return m, nil
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH from --build-arg (as buildx
// accepts it) or else the environment.
func sourceDateEpoch(args map[string]string) (*time.Time, error) {
	v, ok := args["SOURCE_DATE_EPOCH"]
	if !ok {
		v = os.Getenv("SOURCE_DATE_EPOCH")
	}
	if v == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("SOURCE_DATE_EPOCH=%q: must be a non-negative number of seconds", v)
	}
	t := time.Unix(n, 0).UTC()
	return &t, nil
}

// cacheBound is the size kiln's directory is trimmed to after the build:
// --max-cache-size, else $KILN_MAX_CACHE_SIZE, else solver.DefaultMaxSize.
// 0 means no bound.
func (f *buildFlags) cacheBound(root string) (int64, error) {
	v, from := f.maxCacheSize, "--max-cache-size"
	if v == "" {
		v, from = os.Getenv("KILN_MAX_CACHE_SIZE"), "KILN_MAX_CACHE_SIZE"
	}
	if v == "" {
		return solver.DefaultMaxSize(root), nil
	}
	n, err := parseSize(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%s: %w", from, v, err)
	}
	return n, nil
}

// cacheDir is kiln's directory: $XDG_CACHE_HOME/kiln, else ~/.cache/kiln.
func cacheDir() (string, error) {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "kiln"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find kiln's cache directory: %w", err)
	}
	return filepath.Join(home, ".cache", "kiln"), nil
}

func writeMetadata(path string, res *solver.Result) error {
	md := map[string]any{
		"containerimage.digest":        res.Digest.String(),
		"containerimage.config.digest": res.ConfigDigest.String(),
		"containerimage.descriptor": map[string]any{
			"mediaType": res.MediaType,
			"digest":    res.Digest.String(),
			"size":      res.ManifestSize,
		},
		"kiln.build.report": report(res),
	}
	if len(res.Names) > 0 {
		md["image.name"] = strings.Join(res.Names, ",")
	}
	if err := writeJSON(path, md); err != nil {
		return fmt.Errorf("--metadata-file: %w", err)
	}
	return nil
}

// report is the build summary as --report and --metadata-file write it.
func report(res *solver.Result) map[string]any {
	steps := res.Steps
	if steps == nil {
		steps = []solver.StepReport{}
	}
	r := map[string]any{"steps": steps, "totals": res.Totals, "failed": res.Failed, "mounts": res.Mounts}
	if res.Failed {
		r["error"] = res.Error
	}
	if res.Plan != nil {
		r["plan"] = res.Plan
	}
	return r
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

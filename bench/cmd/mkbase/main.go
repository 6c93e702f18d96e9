// Command mkbase writes the benchmark's base images to the local registry:
// layer tarballs made on the host (a debootstrap root filesystem, the host's
// Go toolchain) appended to an optional base image, with a minimal config.
//
// The bench makes its own bases instead of pulling debian or golang from
// Docker Hub because the machine reaches no registry but its own, and so that
// every peer starts from byte-identical images.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

type options struct {
	ref    string
	base   string
	layers []string
	env    []string
	cmd    []string
	force  bool
}

// exists reports whether ref is already in the registry, so a rerun of the
// bench setup does not recompress hundreds of megabytes.
func exists(ctx context.Context, ref name.Reference) (bool, error) {
	_, err := remote.Head(ref, remote.WithContext(ctx))
	if err == nil {
		return true, nil
	}
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return false, nil
	}
	return false, fmt.Errorf("check %s: %w", ref, err)
}

func build(ctx context.Context, o options) error {
	ref, err := name.ParseReference(o.ref, name.Insecure)
	if err != nil {
		return fmt.Errorf("parse -ref: %w", err)
	}
	if !o.force {
		ok, err := exists(ctx, ref)
		if err != nil {
			return err
		}
		if ok {
			log.Printf("mkbase: %s already present", ref)
			return nil
		}
	}
	img := empty.Image
	if o.base != "" {
		baseRef, err := name.ParseReference(o.base, name.Insecure)
		if err != nil {
			return fmt.Errorf("parse -base: %w", err)
		}
		img, err = remote.Image(baseRef, remote.WithContext(ctx))
		if err != nil {
			return fmt.Errorf("read base %s: %w", baseRef, err)
		}
	}
	for _, path := range o.layers {
		layer, err := tarball.LayerFromFile(path)
		if err != nil {
			return fmt.Errorf("layer from %s: %w", path, err)
		}
		img, err = mutate.AppendLayers(img, layer)
		if err != nil {
			return fmt.Errorf("append layer %s: %w", path, err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = mergeEnv(cf.Config.Env, o.env)
	if len(o.cmd) > 0 {
		cf.Config.Cmd = o.cmd
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return fmt.Errorf("digest: %w", err)
	}
	log.Printf("mkbase: pushed %s@%s", ref, d)
	return nil
}

// mergeEnv overrides variables of the base by name, keeping their order.
func mergeEnv(base, add []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range add {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range out {
			if ok, _, _ := strings.Cut(old, "="); ok == k {
				out[i], replaced = kv, true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

func main() {
	var o options
	var layers, env, cmd listFlag
	flag.StringVar(&o.ref, "ref", "", "image reference to push (a 127.0.0.1 registry)")
	flag.StringVar(&o.base, "base", "", "base image to append to (default: empty)")
	flag.Var(&layers, "layer", "layer tarball to append (repeatable)")
	flag.Var(&env, "env", "KEY=VALUE for the image config (repeatable)")
	flag.Var(&cmd, "cmd", "Cmd argument (repeatable)")
	flag.BoolVar(&o.force, "force", false, "push even if the reference exists")
	flag.Parse()
	o.layers, o.env, o.cmd = layers, env, cmd
	if o.ref == "" {
		log.Fatal("mkbase: -ref is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := build(ctx, o); err != nil {
		log.Fatalf("mkbase: %v", err)
	}
}

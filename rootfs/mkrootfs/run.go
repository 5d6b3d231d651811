package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/rackboot/rackboot/rootfs"
)

const usage = `usage:
  mkrootfs build -recipe FILE -arch ARCH [-out DIR] [-cache DIR] [-repo DIR] [-agent-version V] [-keep-tree] [-v]
  mkrootfs inspect DIR...     (output directories of build: root.img and manifest.json)
  mkrootfs check FILE...      (validate recipes)`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "build":
		return build(ctx, args[1:], stdout, stderr)
	case "inspect":
		if len(args) < 2 {
			return errors.New(usage)
		}
		var errs []error
		for _, dir := range args[1:] {
			if err := rootfs.InspectDir(ctx, dir); err != nil {
				errs = append(errs, err)
				continue
			}
			fmt.Fprintf(stdout, "%s: ok\n", dir)
		}
		return errors.Join(errs...)
	case "check":
		var errs []error
		for _, f := range args[1:] {
			r, err := rootfs.Load(f)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			h, err := r.Hash()
			if err != nil {
				errs = append(errs, err)
				continue
			}
			fmt.Fprintf(stdout, "%s: ok, recipe sha256 %s\n", f, h)
		}
		return errors.Join(errs...)
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}

func build(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mkrootfs build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	recipe := fs.String("recipe", "", "recipe file (rootfs/recipes/NAME.yaml); required")
	arch := fs.String("arch", "", "amd64, arm64 or armhf; required")
	out := fs.String("out", "out/images", "the image goes to OUT/NAME-ARCH")
	cache := fs.String("cache", "out/cache/rootfs", "downloaded packages are kept here; empty for none")
	repo := fs.String("repo", ".", "module root to build the agent from; empty for no agent")
	version := fs.String("agent-version", "", "the agent's main.version")
	keep := fs.Bool("keep-tree", false, "keep the unpacked root in OUT/NAME-ARCH/tree")
	verbose := fs.Bool("v", false, "show mmdebstrap's and the tools' output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *recipe == "" || *arch == "" || fs.NArg() != 0 {
		fs.Usage()
		return errors.New("-recipe and -arch are required")
	}
	r, err := rootfs.Load(*recipe)
	if err != nil {
		return err
	}
	o := rootfs.Options{
		Recipe:       r,
		Arch:         *arch,
		Out:          filepath.Join(*out, r.Name+"-"+*arch),
		Cache:        *cache,
		Repo:         *repo,
		AgentVersion: *version,
		KeepTree:     *keep,
		Logger:       slog.New(slog.NewTextHandler(stderr, nil)),
	}
	if *verbose {
		o.Output = stderr
	}
	start := time.Now()
	m, err := rootfs.Build(ctx, o)
	if err != nil {
		return err
	}
	agent := "none (WARNING: no agent in this image)"
	if m.Agent != nil {
		agent = m.Agent.SHA256
	}
	fmt.Fprintf(stdout, "%s\n  sha256  %s\n  size    %d bytes (%d packages)\n  agent   %s\n  took    %s\n",
		filepath.Join(o.Out, m.Image.File), m.Image.SHA256, m.Image.Size, len(m.Packages), agent, time.Since(start).Round(time.Second))
	return nil
}

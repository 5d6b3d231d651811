package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"golang.org/x/sync/errgroup"

	"github.com/rackboot/rackboot/config"
	"github.com/rackboot/rackboot/nbd"
	"github.com/rackboot/rackboot/nbd/catalog"
	"github.com/rackboot/rackboot/nbd/cow"
)

// runServe is `rackboot serve`: the appliance.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/rackboot/rackboot.yaml", "configuration file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.Level()}))
	return serve(ctx, cfg, log)
}

// serve runs every server of the appliance until ctx is done, then shuts
// them down cleanly: stop accepting, finish in-flight requests, sync the
// write layers.
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	store, err := cow.OpenStore(cfg.StateDir, cow.Options{})
	if err != nil {
		return err
	}
	defer store.Close()
	var images []catalog.Image
	for _, im := range cfg.Images {
		images = append(images, catalog.Image{Name: im.Name, Path: im.Path})
	}
	cat, err := catalog.New(images, store)
	if err != nil {
		return err
	}
	defer cat.Close()
	cat.Logger = log

	nbdSrv := &nbd.Server{
		Resolver:       cat,
		Logger:         log.With("srv", "nbd"),
		MaxConnections: cfg.NBD.MaxConnections,
		DrainTimeout:   cfg.NBD.DrainTimeout,
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return nbdSrv.ListenAndServe(ctx, cfg.NBD.Listen) })
	log.Info("rackboot serving", "version", version, "nbd", cfg.NBD.Listen, "images", len(images), "state", cfg.StateDir)
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	if err == nil {
		log.Info("rackboot stopped")
	}
	return err
}

// loadConfig reads and checks a configuration file, including that the
// files it names exist.
func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if err := cfg.CheckFiles(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// runCheckConfig is `rackboot check-config FILE`.
func runCheckConfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("check-config: %w", errUsage)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: rackboot check-config FILE")
		return fmt.Errorf("check-config: want one FILE: %w", errUsage)
	}
	if _, err := loadConfig(fs.Arg(0)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok\n", fs.Arg(0))
	return nil
}

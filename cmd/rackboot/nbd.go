package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"

	"github.com/rackboot/rackboot/nbd"
	"github.com/rackboot/rackboot/nbd/catalog"
	"github.com/rackboot/rackboot/nbd/cow"
)

// imageFlags collects repeated --image NAME=PATH flags.
type imageFlags []catalog.Image

func (f *imageFlags) String() string { return fmt.Sprint(*f) }

func (f *imageFlags) Set(v string) error {
	name, path, ok := strings.Cut(v, "=")
	if !ok || name == "" || path == "" {
		return fmt.Errorf("want NAME=PATH, got %q", v)
	}
	*f = append(*f, catalog.Image{Name: name, Path: path})
	return nil
}

// runNBD is `rackboot nbd`: the standalone copy-on-write NBD server, and
// the session maintenance commands that go with it.
func runNBD(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("nbd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var images imageFlags
	listen := fs.String("listen", ":10809", "TCP address to serve on")
	state := fs.String("state", "", "directory for copy-on-write sessions (required)")
	discard := fs.String("discard", "", "delete session NAME@SESSION and exit")
	list := fs.Bool("sessions", false, "list sessions with their size on disk and exit")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.Var(&images, "image", "serve image file PATH as export NAME (read-only) and NAME@SESSION (copy-on-write); repeatable")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: rackboot nbd --listen ADDR --image NAME=PATH [--image ...] --state DIR")
		fmt.Fprintln(stderr, "       rackboot nbd --state DIR --discard NAME@SESSION")
		fmt.Fprintln(stderr, "       rackboot nbd --state DIR --sessions")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *state == "" {
		return fmt.Errorf("nbd: --state is required: %w", errUsage)
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	if *discard != "" {
		if err := cow.DiscardSession(*state, *discard); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "discarded %s\n", *discard)
		return nil
	}
	if *list {
		sessions, err := cow.ListSessions(*state)
		if err != nil {
			return err
		}
		return printSessions(stdout, sessions)
	}
	if len(images) == 0 {
		return fmt.Errorf("nbd: at least one --image NAME=PATH is required: %w", errUsage)
	}
	store, err := cow.OpenStore(*state, cow.Options{})
	if err != nil {
		return err
	}
	defer store.Close()
	cat, err := catalog.New(images, store)
	if err != nil {
		return err
	}
	defer cat.Close()
	cat.Logger = log
	srv := &nbd.Server{Resolver: cat, Logger: log}
	log.Info("serving NBD", "addr", *listen, "images", len(images), "state", *state, "procs", runtime.GOMAXPROCS(0))
	return srv.ListenAndServe(ctx, *listen)
}

func printSessions(w io.Writer, sessions []cow.SessionInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tOWNER\tIMAGE\tCREATED\tON DISK")
	for _, s := range sessions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Owner, s.Image, s.Created.Format("2006-01-02 15:04:05"), humanBytes(s.DiskBytes))
	}
	return tw.Flush()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

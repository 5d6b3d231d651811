// Command demo boots two virtual x86 boards from rackboot end to end and
// prints each board's boot timeline: `make demo`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/rackboot/rackboot/e2e"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	root := fs.String("root", ".", "repository root (artifacts under bin/ and out/)")
	boards := fs.Int("boards", 2, "number of x86 boards")
	keep := fs.Bool("keep", false, "keep the working directory (logs, consoles)")
	timeout := fs.Duration("timeout", 15*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := preflight(); err != nil {
		return err
	}
	a := e2e.DefaultArtifacts(*root)
	if err := a.Check(); err != nil {
		return fmt.Errorf("%w\nbuild them first: make build boot-tree initramfs rootfs (make demo does)", err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	dir, err := os.MkdirTemp("/var/tmp", "rackboot-demo-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	r, err := e2e.NewRack(ctx, dir, a)
	if err != nil {
		return err
	}
	defer r.Close()
	r.Log = out
	fmt.Fprintf(out, "virtual rack in network namespace %s, boards under %s\n", r.NS, r.Accel)
	var bs []*e2e.Board
	for i := range *boards {
		b, err := r.AddBoard(fmt.Sprintf("demo-%d", i+1), "amd64", "ipxe")
		if err != nil {
			return err
		}
		bs = append(bs, b)
	}
	if err := r.StartAppliance(ctx); err != nil {
		return err
	}
	for _, b := range bs {
		if err := b.PowerOn(ctx); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "waiting for the boards to report ready (TCG: a minute or two)...")
	var errs []error
	for _, b := range bs {
		boot, err := r.WaitStep(ctx, b.Name, "ready", 0)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintln(out)
		total := e2e.PrintTimeline(out, b, boot)
		fmt.Fprintf(out, "  total: %.1fs from power-on to ready\n", total.Seconds())
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w (logs in %s; rerun with -keep to keep them)", errors.Join(errs...), dir)
	}
	fmt.Fprintln(out, "\nshutting down the rack and removing it")
	return nil
}

// preflight explains what the demo needs if it's missing.
func preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root: it creates a network namespace, a bridge and taps (run: sudo make demo)")
	}
	for _, p := range []string{"qemu-system-x86_64", "ip", "curl"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found (make demo installs it: qemu-system-x86, iproute2, curl)", p)
		}
	}
	probe := "rbdemoprobe"
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Errorf("network namespaces don't work here (%v: %s): the demo needs them", err, out)
	}
	exec.Command("ip", "netns", "del", probe).Run()
	return nil
}

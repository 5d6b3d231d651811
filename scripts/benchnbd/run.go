package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// config holds the parsed command line.
type config struct {
	size        int64         // base image size in bytes
	runtime     time.Duration // measured time of each time-based fio row
	ramp        time.Duration // unmeasured warm-up before each time-based fio row
	servers     []string      // server names, in column order
	rackboot    string        // path of the rackboot binary; empty means not measured
	out         string        // optional Markdown output file
	workDir     string        // parent of the run's temporary directory
	keep        bool          // keep the temporary directory
	seqDepth    int           // queue depth of the sequential read row
	clients     int           // concurrent clients of the many-clients row
	connects    int           // simultaneous TCP connects of the connect-storm row
	greetWithin time.Duration // deadline for each greeting in the connect storm
	costBytes   int64         // bytes of random 4 KiB writes in the write-layer cost row
	loopback    time.Duration // duration of the loopback TCP measurement
	count       int           // rounds over all servers; each cell is the median
	// serverCPUs and clientCPUs, if set, pin the servers and fio to these
	// CPU lists (taskset -c), to see a row with the threads' placement
	// fixed instead of left to the scheduler.
	serverCPUs, clientCPUs string
}

// serverNames lists the servers benchnbd knows, in column order.
func serverNames() []string { return []string{"rackboot", "nbd-server", "qemu-nbd", "nbdkit"} }

func parseConfig(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("benchnbd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	size := fs.String("size", "1G", "base image `size` (K, M, G suffixes are powers of 1024)")
	runtime := fs.Duration("runtime", 10*time.Second, "measured `duration` of each time-based row")
	ramp := fs.Duration("ramp", time.Second, "unmeasured warm-up before each time-based row")
	quick := fs.Bool("quick", false, "quick run: -runtime 3s and, unless -size is given, -size 256M")
	servers := fs.String("servers", strings.Join(serverNames(), ","), "comma-separated `list` of servers to measure")
	rackboot := fs.String("rackboot", "", "`path` of the rackboot binary (empty: rackboot shows n/a)")
	out := fs.String("out", "", "also write the table as Markdown to `file`")
	workDir := fs.String("workdir", "/var/tmp", "`dir`ectory for the run's temporary files")
	keep := fs.Bool("keep", false, "keep the temporary directory")
	seqDepth := fs.Int("seq-qd", 4, "queue `depth` of the sequential 1 MiB read row")
	clients := fs.Int("clients", 32, "`number` of concurrent whole-image readers")
	connects := fs.Int("connects", 128, "`number` of simultaneous TCP connects")
	greet := fs.Duration("greet-timeout", 5*time.Second, "each simultaneous connect must get the NBD greeting within this `duration`")
	count := fs.Int("count", 1, "measure every server `n` times, in rounds, and report the medians")
	cost := fs.String("cost", "64M", "`bytes` of random 4 KiB writes in the write-layer cost row")
	pin := fs.String("pin", "", "`SERVER/CLIENT` CPU lists (taskset -c syntax, e.g. 0/1 or 0/0) to pin the servers and fio to; empty: the scheduler places them")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["runtime"] {
			*runtime = 3 * time.Second
		}
		if !set["size"] {
			*size = "256M"
		}
	}
	c := config{
		runtime:     *runtime,
		ramp:        *ramp,
		rackboot:    *rackboot,
		out:         *out,
		workDir:     *workDir,
		keep:        *keep,
		seqDepth:    *seqDepth,
		clients:     *clients,
		connects:    *connects,
		greetWithin: *greet,
		loopback:    3 * time.Second,
		count:       *count,
	}
	if *quick {
		c.loopback = 2 * time.Second
	}
	var err error
	if c.size, err = benchkit.ParseBytes(*size); err != nil {
		return config{}, fmt.Errorf("parsing -size: %w", err)
	}
	if c.costBytes, err = benchkit.ParseBytes(*cost); err != nil {
		return config{}, fmt.Errorf("parsing -cost: %w", err)
	}
	switch {
	case c.size < 16<<20 || c.size%(1<<20) != 0:
		return config{}, fmt.Errorf("-size %d: want a multiple of 1 MiB, at least 16 MiB", c.size)
	case c.costBytes <= 0 || c.costBytes%4096 != 0 || c.costBytes > c.size:
		return config{}, fmt.Errorf("-cost %d: want a multiple of 4 KiB no larger than -size", c.costBytes)
	case c.runtime < time.Second || c.ramp < 0:
		return config{}, errors.New("-runtime must be at least 1s and -ramp not negative")
	case c.seqDepth < 1 || c.clients < 1 || c.connects < 1 || c.count < 1:
		return config{}, errors.New("-seq-qd, -clients, -connects and -count must be positive")
	}
	if *pin != "" {
		srv, cli, ok := strings.Cut(*pin, "/")
		if !ok || !validCPUList(srv) || !validCPUList(cli) {
			return config{}, fmt.Errorf("-pin %q: want SERVER/CLIENT CPU lists, such as 0/1", *pin)
		}
		c.serverCPUs, c.clientCPUs = srv, cli
	}
	for name := range strings.SplitSeq(*servers, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !slices.Contains(serverNames(), name) {
			return config{}, fmt.Errorf("-servers: unknown server %q (known: %s)", name, strings.Join(serverNames(), ", "))
		}
		if !slices.Contains(c.servers, name) {
			c.servers = append(c.servers, name)
		}
	}
	if len(c.servers) == 0 {
		return config{}, errors.New("-servers: no server selected")
	}
	return c, nil
}

// validCPUList reports whether s is a CPU list as taskset -c takes it:
// numbers and ranges (0-3), separated by commas.
func validCPUList(s string) bool {
	if s == "" {
		return false
	}
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a {
			return false
		}
	}
	return true
}

// pinned prefixes argv with taskset when cpus is set.
func pinned(cpus string, argv []string) []string {
	if cpus == "" {
		return argv
	}
	return append([]string{"taskset", "-c", cpus}, argv...)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if _, err := exec.LookPath("fio"); err != nil {
		return fmt.Errorf("finding the fio client: %w", err)
	}
	if cfg.rackboot != "" {
		if cfg.rackboot, err = filepath.Abs(cfg.rackboot); err != nil {
			return fmt.Errorf("resolving -rackboot: %w", err)
		}
	}

	dir, err := os.MkdirTemp(cfg.workDir, "benchnbd-")
	if err != nil {
		return fmt.Errorf("creating the work directory: %w", err)
	}
	if cfg.keep {
		log.Info("keeping work directory", "file", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	b := &bench{cfg: cfg, log: log, dir: dir, res: newResults(cfg.servers)}
	rep, err := b.run(ctx)
	if err != nil {
		return err
	}
	rep.writeText(stdout)
	if cfg.out != "" {
		if err := benchkit.WriteFile(cfg.out, rep.writeMarkdown); err != nil {
			return err
		}
	}
	if rep.imageChanged {
		return errors.New("the base image changed during the run")
	}
	return nil
}

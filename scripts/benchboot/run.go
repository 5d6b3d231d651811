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
	"strings"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// config holds the parsed command line.
type config struct {
	servers     []string // server names, in column order
	selected    []string // selected row keys, in table order
	rackboot    string   // path of the rackboot binary; empty means not measured
	out         string   // optional Markdown output file
	workDir     string   // parent of the run's temporary directory
	stateDir    string   // parent of the servers' directories (state, leases)
	keep        bool     // keep the temporary directory
	size        int64    // size of the transferred file in bytes
	count       int      // rounds over all servers; each cell is the median
	clients     int      // concurrent TFTP and HTTP clients of the "many" rows
	outstanding int      // DHCP handshakes in flight in the dhcp-many row
	handshakes  int      // DHCP handshakes per measurement
	mtu         int      // MTU of the veth pair
	verbose     bool     // log every batch
}

// serverNames lists the servers benchboot knows, in column order.
func serverNames() []string {
	return []string{"rackboot", "dnsmasq", "kea", "kea-mt", "tftpd-hpa", "nginx"}
}

// rowKeys lists the rows benchboot knows, in table order.
func rowKeys() []string {
	return []string{"dhcp-1", "dhcp-many", "tftp-1468-1", "tftp-1468-many", "tftp-65464-1", "tftp-65464-many", "http-1", "http-many"}
}

// maxHandshakes bounds -handshakes: the dynamic pool is 10.88.1.0 to
// 10.88.255.254, and every handshake takes a distinct address.
const maxHandshakes = 60000

func parseConfig(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("benchboot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	servers := fs.String("servers", strings.Join(serverNames(), ","), "comma-separated `list` of servers to measure")
	rows := fs.String("rows", "dhcp,tftp,http", "comma-separated `list` of rows to measure: dhcp, tftp, http or row keys ("+strings.Join(rowKeys(), ", ")+")")
	rackboot := fs.String("rackboot", "", "`path` of the rackboot binary (empty: rackboot shows n/a)")
	out := fs.String("out", "", "also write the table as Markdown to `file`")
	workDir := fs.String("workdir", "/var/tmp", "`dir`ectory for the run's temporary files (the boot tree with the file)")
	stateDir := fs.String("statedir", "/dev/shm", "`dir`ectory for the servers' configuration, state and lease files "+
		"(the default, a tmpfs, makes fsync free, so that servers that flush every lease and servers that don't compete on equal terms)")
	keep := fs.Bool("keep", false, "keep the temporary directory")
	quick := fs.Bool("quick", false, "quick run: unless given, -size 16M, -count 1, -handshakes 1000")
	size := fs.String("size", "64M", "`size` of the transferred file (K, M, G suffixes are powers of 1024)")
	count := fs.Int("count", 3, "measure every server `n` times, in rounds, and report the medians")
	clients := fs.Int("clients", 16, "`number` of concurrent TFTP and HTTP clients")
	outstanding := fs.Int("outstanding", 64, "DHCP handshakes in `flight` in the concurrent DHCP row")
	handshakes := fs.Int("handshakes", 5000, "DHCP handshakes (distinct clients) per `measurement`")
	mtu := fs.Int("mtu", 1500, "`MTU` of the veth pair between the namespaces")
	verbose := fs.Bool("v", false, "log every batch of transfers")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["size"] {
			*size = "16M"
		}
		if !set["count"] {
			*count = 1
		}
		if !set["handshakes"] {
			*handshakes = 1000
		}
	}
	c := config{
		rackboot:    *rackboot,
		out:         *out,
		workDir:     *workDir,
		stateDir:    *stateDir,
		keep:        *keep,
		count:       *count,
		clients:     *clients,
		outstanding: *outstanding,
		handshakes:  *handshakes,
		mtu:         *mtu,
		verbose:     *verbose,
	}
	var err error
	if c.size, err = benchkit.ParseBytes(*size); err != nil {
		return config{}, fmt.Errorf("parsing -size: %w", err)
	}
	switch {
	case c.size < 1<<20:
		return config{}, fmt.Errorf("-size %d: want at least 1 MiB", c.size)
	case c.count < 1 || c.clients < 1 || c.outstanding < 1:
		return config{}, errors.New("-count, -clients and -outstanding must be positive")
	case c.handshakes < c.outstanding || c.handshakes > maxHandshakes:
		return config{}, fmt.Errorf("-handshakes %d: want between -outstanding (%d) and %d", c.handshakes, c.outstanding, maxHandshakes)
	case c.mtu < 576 || c.mtu > 65535:
		return config{}, fmt.Errorf("-mtu %d: want 576 to 65535", c.mtu)
	}
	if c.servers, err = parseList(*servers, serverNames(), nil); err != nil {
		return config{}, fmt.Errorf("-servers: %w", err)
	}
	groups := map[string][]string{}
	for _, k := range rowKeys() {
		g, _, _ := strings.Cut(k, "-")
		groups[g] = append(groups[g], k)
	}
	if c.selected, err = parseList(*rows, rowKeys(), groups); err != nil {
		return config{}, fmt.Errorf("-rows: %w", err)
	}
	return c, nil
}

// parseList parses a comma-separated list of names from known, where a
// group name stands for its members. The result follows known's order.
func parseList(s string, known []string, groups map[string][]string) ([]string, error) {
	want := map[string]bool{}
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		switch {
		case name == "":
		case slices.Contains(known, name):
			want[name] = true
		case groups[name] != nil:
			for _, m := range groups[name] {
				want[m] = true
			}
		default:
			return nil, fmt.Errorf("unknown name %q (known: %s)", name, strings.Join(known, ", "))
		}
	}
	var out []string
	for _, k := range known {
		if want[k] {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("nothing selected")
	}
	return out, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if os.Geteuid() != 0 {
		return errors.New("benchboot needs root (network namespaces, port 67 and 69, raw sockets)")
	}
	for _, tool := range []string{"ip", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("finding %s: %w", tool, err)
		}
	}
	if cfg.rackboot != "" {
		if cfg.rackboot, err = filepath.Abs(cfg.rackboot); err != nil {
			return fmt.Errorf("resolving -rackboot: %w", err)
		}
	}

	removeStaleDirs(log, cfg.workDir, cfg.stateDir)
	prefix := fmt.Sprintf("%s%d-", nsPrefix, os.Getpid())
	if cfg.keep {
		prefix = nsPrefix + "kept-" // not removed by later runs
	}
	dir, err := os.MkdirTemp(cfg.workDir, prefix)
	if err != nil {
		return fmt.Errorf("creating the work directory: %w", err)
	}
	stateDir, err := os.MkdirTemp(cfg.stateDir, prefix)
	if err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("creating the state directory: %w", err)
	}
	for _, d := range []string{dir, stateDir} {
		// The servers drop privileges (dnsmasq, nginx workers, tftpd-hpa):
		// let them in.
		if err := os.Chmod(d, 0o755); err != nil {
			return fmt.Errorf("creating the work directory: %w", err)
		}
		if cfg.keep {
			log.Info("keeping work directory", "file", d)
		} else {
			defer os.RemoveAll(d)
		}
	}

	removeStaleTestbeds(log)
	tb, err := newTestbed(ctx, cfg.mtu)
	if err != nil {
		return err
	}
	defer func() {
		if err := tb.close(); err != nil {
			log.Error("removing the namespaces", "err", err)
		}
	}()

	b := &bench{cfg: cfg, log: log, dir: dir, stateDir: stateDir, tb: tb, res: newResults(cfg.servers)}
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
	return nil
}

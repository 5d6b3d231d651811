package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/rackboot/rackboot/e2e"
	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// config is the command line.
type config struct {
	root       string
	runs       int
	pxelinux   bool
	out        string
	keep       bool
	verbose    bool
	timeout    time.Duration
	busybox    string
	nbdThreads int
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("benche2e", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.root, "root", ".", "repository root (artifacts under bin/ and out/)")
	fs.IntVar(&c.runs, "n", 3, "boots per path")
	fs.BoolVar(&c.pxelinux, "pxelinux", true, "also boot rackboot with loader: pxelinux (a second row)")
	fs.StringVar(&c.out, "out", "", "also write the results as Markdown to this file")
	fs.BoolVar(&c.keep, "keep", false, "keep the work directory (consoles, logs)")
	fs.BoolVar(&c.verbose, "v", false, "print each boot's milestones and rackboot's timeline")
	fs.DurationVar(&c.timeout, "timeout", 6*time.Minute, "give up on a boot after this long")
	fs.StringVar(&c.busybox, "busybox", "", "static busybox for the stand-in (default: the kernel build's, out/cache/amd64/busybox/bin/busybox)")
	fs.IntVar(&c.nbdThreads, "nbd-threads", 1, "nbd-server max_threads (more than 1 corrupts overlapping copy-on-write writes in 3.24)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.runs < 1 {
		return c, errors.New("-n must be at least 1")
	}
	if c.busybox == "" {
		c.busybox = filepath.Join(c.root, "out", "cache", "amd64", "busybox", "bin", "busybox")
	}
	return c, nil
}

// Path keys, in the order they boot in each round.
const (
	pathRackboot = "rackboot"
	pathPXELINUX = "rackboot-pxelinux"
	pathStandin  = "stand-in"
)

// pathLabels describe the paths in the tables.
var pathLabels = map[string]string{
	pathRackboot: "rackboot: iPXE script, HTTP",
	pathPXELINUX: "rackboot: PXELINUX, TFTP",
	pathStandin:  "stand-in: dnsmasq, PXELINUX, nbd-server",
}

// A bootPath is one way of booting the board.
type bootPath struct {
	key   string
	board *e2e.Board
	rack  *e2e.Rack // rackboot's: its API has the boot's own timeline
	// done is the line printed once the root is mounted, right before
	// switch_root; then, where there is one, the line that shows control
	// passing to the root's init.
	done, execInit *regexp.Regexp
	before, after  func(context.Context) error // around each boot
}

// failLine is a boot that won't get anywhere.
var failLine = regexp.MustCompile(`BOOT FAILED|standin: FAILED|Kernel panic|No bootable device|No configuration methods succeeded`)

// result is one boot.
type result struct {
	path     string
	run      int
	at       map[string]time.Duration // milestones from power-on
	reported time.Duration            // rackboot's switch_root step as the appliance recorded it
	load     string                   // 1-minute load average when the boot started
	others   int                      // other QEMU guests running when it started
	err      error
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if err := preflight(cfg); err != nil {
		return err
	}
	removeStale("/var/tmp", stderr)
	a := e2e.DefaultArtifacts(cfg.root)
	if err := a.Check(); err != nil {
		return fmt.Errorf("%w\nbuild them first: make rack", err)
	}
	started := time.Now()
	work, err := os.MkdirTemp("/var/tmp", fmt.Sprintf("benche2e-%d-", os.Getpid()))
	if err != nil {
		return err
	}
	// dnsmasq drops root and must reach the TFTP root below.
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	defer func() {
		if cfg.keep {
			os.WriteFile(filepath.Join(work, keptFile), []byte("kept by -keep; remove by hand\n"), 0o644)
			fmt.Fprintf(stderr, "kept %s\n", work)
			return
		}
		os.RemoveAll(work)
	}()
	progress := io.Discard
	if cfg.verbose {
		progress = stderr
	}

	// The stand-in's files.
	modules, err := kernelModules(cfg.root)
	if err != nil {
		return err
	}
	sdir := filepath.Join(work, "standin")
	initrdSize, err := buildStandinTFTP(filepath.Join(sdir, "tftp"), standinSources{
		Tree: a.Tree, Busybox: cfg.busybox, NBDClient: nbdClientPath(), Modules: modules,
	})
	if err != nil {
		return fmt.Errorf("building the stand-in: %w", err)
	}

	rep := &report{cfg: cfg, started: started, machine: machineInfo(), versions: versions(a),
		sizes: fileSizes(a, initrdSize), loadStart: benchkit.LoadAverage()}

	// rackboot's rack: the appliance and its boards.
	rb, err := newRack(ctx, work, "rackboot", a, progress)
	if err != nil {
		return err
	}
	defer rb.Close()
	rep.accel = rb.Accel
	paths := []*bootPath{}
	b, err := rb.AddBoard("bench", "amd64", "ipxe")
	if err != nil {
		return err
	}
	paths = append(paths, rackbootPath(pathRackboot, rb, b))
	if cfg.pxelinux {
		bp, err := rb.AddBoard("bench-pxelinux", "amd64", "pxelinux")
		if err != nil {
			return err
		}
		paths = append(paths, rackbootPath(pathPXELINUX, rb, bp))
	}
	if err := rb.StartAppliance(ctx); err != nil {
		return err
	}

	// The stand-in's rack: the same board (name, MAC, address, disk) on
	// the same network, with dnsmasq and nbd-server.
	sr, err := newRack(ctx, work, "standin-rack", a, progress)
	if err != nil {
		return err
	}
	defer sr.Close()
	sb, err := sr.AddBoard("bench", "amd64", "ipxe")
	if err != nil {
		return err
	}
	st := &standin{rack: sr, dir: sdir, image: a.Image, threads: cfg.nbdThreads}
	defer st.close()
	if err := st.startDNSMasq(ctx, sb.MAC, sb.IP.String()); err != nil {
		return err
	}
	paths = append(paths, &bootPath{
		key: pathStandin, board: sb,
		done:   standinMarker,
		before: st.startNBD,
		after:  func(context.Context) error { return st.stopNBD() },
	})

	fmt.Fprintf(stdout, "benche2e: %d boot(s) per path, alternating, one board at a time (QEMU under %s); work dir %s\n", cfg.runs, rb.Accel, work)
	for i := 1; i <= cfg.runs; i++ {
		for _, p := range paths {
			r := p.boot(ctx, i, cfg.timeout, work, progress)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rep.results = append(rep.results, r)
			fmt.Fprintln(stdout, rep.runLine(r))
		}
	}
	rep.loadEnd = benchkit.LoadAverage()
	rep.elapsed = time.Since(started)
	fmt.Fprintln(stdout)
	rep.writeText(stdout)
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(rep.markdown()), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\nwrote %s\n", cfg.out)
	}
	return rep.failures()
}

// newRack makes a virtual rack under work/name and records its namespace
// for the cleanup of a killed run.
func newRack(ctx context.Context, work, name string, a e2e.Artifacts, log io.Writer) (*e2e.Rack, error) {
	dir := filepath.Join(work, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r, err := e2e.NewRack(ctx, dir, a)
	if err != nil {
		return nil, err
	}
	r.Log = log
	if err := recordNamespace(work, r.NS); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// rackbootPath boots board b from rackboot.
func rackbootPath(key string, r *e2e.Rack, b *e2e.Board) *bootPath {
	return &bootPath{
		key: key, board: b, rack: r,
		done:     regexp.MustCompile(`rackboot: \[[0-9.]+\] switch_root to `),
		execInit: regexp.MustCompile(`switch_root: executing init`),
	}
}

// boot powers the board on, waits for its root, and powers it off.
func (p *bootPath) boot(ctx context.Context, n int, timeout time.Duration, work string, log io.Writer) result {
	res := result{path: p.key, run: n, at: map[string]time.Duration{}, load: benchkit.LoadAverage(), others: otherGuests(work + "/")}
	var prev int64
	if p.rack != nil {
		if cur, err := p.rack.CurrentBoot(ctx, p.board.Name); err == nil {
			prev = cur.ID
		}
	}
	if p.before != nil {
		if res.err = p.before(ctx); res.err != nil {
			return res
		}
	}
	if p.after != nil {
		defer func() {
			if err := p.after(ctx); err != nil && res.err == nil {
				res.err = err
			}
		}()
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if res.err = p.board.PowerOn(bctx); res.err != nil {
		return res
	}
	defer p.board.PowerOff()
	cp := startCapture(bctx, p.board.Console(), p.board.PoweredOn())
	done, err := cp.wait(bctx, p.done, failLine)
	if err != nil {
		res.err = fmt.Errorf("%s run %d: %w", p.key, n, err)
	} else {
		res.at[msSwitchRoot] = done.end
		if p.execInit != nil {
			wctx, wcancel := context.WithTimeout(bctx, 10*time.Second)
			if l, err := cp.wait(wctx, p.execInit, nil); err == nil {
				res.at[msExecInit] = l.end
			}
			wcancel()
		}
	}
	lines := cp.Lines()
	for k, v := range findMilestones(lines, commonMilestones) {
		res.at[k] = v
	}
	var timeline strings.Builder
	if p.rack != nil && res.err == nil {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		boot, err := p.rack.WaitStep(wctx, p.board.Name, "switch_root", prev)
		wcancel()
		if err == nil {
			if d, ok := e2e.StepTime(p.board, boot, "step", "switch_root"); ok {
				res.reported = d
			}
			e2e.PrintTimeline(&timeline, p.board, boot)
		} else {
			fmt.Fprintf(&timeline, "rackboot's timeline: %v\n", err)
		}
	}
	saveTranscript(filepath.Join(work, fmt.Sprintf("run%02d-%s.console.txt", n, p.key)), lines, res, timeline.String())
	if log != io.Discard {
		fmt.Fprintf(log, "%s run %d milestones:", p.key, n)
		for _, m := range append(commonMilestones, milestone{name: msSwitchRoot}, milestone{name: msExecInit}) {
			if d, ok := res.at[m.name]; ok {
				fmt.Fprintf(log, " %s %.2fs", m.name, d.Seconds())
			}
		}
		fmt.Fprintln(log)
		io.WriteString(log, timeline.String())
	}
	return res
}

// saveTranscript writes a boot's console with each line's arrival time.
func saveTranscript(path string, lines []line, r result, timeline string) {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s run %d: when the line began and ended (s from power-on), line\n", r.path, r.run)
	for _, l := range lines {
		fmt.Fprintf(&b, "%8.3f %8.3f  %s\n", l.start.Seconds(), l.end.Seconds(), l.text)
	}
	if timeline != "" {
		b.WriteString("\n# rackboot's timeline of this boot\n" + timeline)
	}
	os.WriteFile(path, []byte(b.String()), 0o644)
}

// kernelModules finds the pinned kernel's unpacked module tree (from
// scripts/kernel.sh) under the repository.
func kernelModules(root string) (string, error) {
	m, _ := filepath.Glob(filepath.Join(root, "out", "cache", "amd64", "kernel", "lib", "modules", "*", "modules.dep"))
	if len(m) != 1 {
		return "", fmt.Errorf("want one kernel module tree with modules.dep under out/cache/amd64/kernel, found %d (make initramfs)", len(m))
	}
	return filepath.Dir(m[0]), nil
}

// nbdClientPath is Debian's nbd-client.
func nbdClientPath() string {
	if p, err := exec.LookPath("nbd-client"); err == nil {
		return p
	}
	return "/usr/sbin/nbd-client"
}

// preflight checks for root and the programs the benchmark runs.
func preflight(cfg config) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces, bridges and taps")
	}
	var missing []string
	for _, p := range []string{"qemu-system-x86_64", "ip", "ss", "curl", "dnsmasq", "nbd-server", "ldd"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if _, err := os.Stat(nbdClientPath()); err != nil {
		missing = append(missing, "nbd-client")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s (scripts/bench-e2e.sh installs them)", strings.Join(missing, ", "))
	}
	if _, err := os.Stat(cfg.busybox); err != nil {
		return fmt.Errorf("static busybox for the stand-in: %w (make initramfs unpacks it, or pass -busybox)", err)
	}
	return nil
}

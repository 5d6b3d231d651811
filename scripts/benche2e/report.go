package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rackboot/rackboot/e2e"
	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// report is everything the run prints.
type report struct {
	cfg       config
	started   time.Time
	elapsed   time.Duration
	accel     string
	machine   []string
	versions  []string
	sizes     []string
	loadStart string
	loadEnd   string
	results   []result
}

// pathsRun are the paths in the results, in boot order.
func (r *report) pathsRun() []string {
	var keys []string
	for _, res := range r.results {
		if !slices.Contains(keys, res.path) {
			keys = append(keys, res.path)
		}
	}
	return keys
}

// runLine is a boot's line in the progress output.
func (r *report) runLine(res result) string {
	if res.err != nil {
		return fmt.Sprintf("run %d  %-40s  FAILED: %v", res.run, pathLabels[res.path], res.err)
	}
	return fmt.Sprintf("run %d  %-40s  root mounted %s  switch_root %s  (load %s, other VMs %d)",
		res.run, pathLabels[res.path], secs(res.at, msRootMounted), secs(res.at, msSwitchRoot), res.load, res.others)
}

func secs(at map[string]time.Duration, k string) string {
	if d, ok := at[k]; ok {
		return fmt.Sprintf("%6.2fs", d.Seconds())
	}
	return "     -"
}

// medianOf is the median over a path's successful boots of what f
// returns.
func (r *report) medianOf(path string, f func(result) (time.Duration, bool)) (time.Duration, bool) {
	var ds []time.Duration
	for _, res := range r.results {
		if res.path != path || res.err != nil {
			continue
		}
		if d, ok := f(res); ok {
			ds = append(ds, d)
		}
	}
	return benchkit.Median(ds)
}

func milestoneOf(name string) func(result) (time.Duration, bool) {
	return func(r result) (time.Duration, bool) { d, ok := r.at[name]; return d, ok }
}

// ratio is rackboot's median over the stand-in's, for a milestone.
func (r *report) ratio(path, name string) (float64, bool) {
	a, ok1 := r.medianOf(path, milestoneOf(name))
	b, ok2 := r.medianOf(pathStandin, milestoneOf(name))
	if !ok1 || !ok2 || b == 0 {
		return 0, false
	}
	return a.Seconds() / b.Seconds(), true
}

// table is the results as rows of cells: a header, the boots, and the
// medians by phase.
func (r *report) runsTable() [][]string {
	rows := [][]string{{"run", "path", "DHCP", "root mounted", "switch_root", "exec init", "rackboot saw switch_root", "load", "other VMs"}}
	for _, res := range r.results {
		if res.err != nil {
			rows = append(rows, []string{fmt.Sprint(res.run), pathLabels[res.path], "failed: " + res.err.Error(), "", "", "", "", res.load, fmt.Sprint(res.others)})
			continue
		}
		dhcp := "-"
		if d, ok := phases[1].span(res.at); ok {
			dhcp = fmt.Sprintf("%.2f", d.Seconds())
		}
		reported := "-"
		if res.reported > 0 {
			reported = fmt.Sprintf("%.2f", res.reported.Seconds())
		}
		rows = append(rows, []string{fmt.Sprint(res.run), pathLabels[res.path], dhcp,
			cell(res.at, msRootMounted), cell(res.at, msSwitchRoot), cell(res.at, msExecInit), reported, res.load, fmt.Sprint(res.others)})
	}
	return rows
}

func cell(at map[string]time.Duration, k string) string {
	if d, ok := at[k]; ok {
		return fmt.Sprintf("%.2f", d.Seconds())
	}
	return "-"
}

// phaseTable is the median of each phase by path, then the totals.
func (r *report) phaseTable() [][]string {
	head := []string{"median (s)"}
	for _, ph := range phases {
		head = append(head, ph.name)
	}
	head = append(head, "= root mounted", "= switch_root", "boots")
	rows := [][]string{head}
	for _, path := range r.pathsRun() {
		row := []string{pathLabels[path]}
		for _, ph := range phases {
			row = append(row, medianCell(r.medianOf(path, func(res result) (time.Duration, bool) { return ph.span(res.at) })))
		}
		row = append(row, medianCell(r.medianOf(path, milestoneOf(msRootMounted))),
			medianCell(r.medianOf(path, milestoneOf(msSwitchRoot))))
		ok, all := 0, 0
		for _, res := range r.results {
			if res.path == path {
				all++
				if res.err == nil {
					ok++
				}
			}
		}
		row = append(row, fmt.Sprintf("%d/%d", ok, all))
		rows = append(rows, row)
	}
	return rows
}

func medianCell(d time.Duration, ok bool) string {
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.2f", d.Seconds())
}

// ratioLines state rackboot's ratios to the stand-in.
func (r *report) ratioLines() []string {
	var out []string
	for _, path := range []string{pathRackboot, pathPXELINUX} {
		if !slices.Contains(r.pathsRun(), path) {
			continue
		}
		q, ok := r.ratio(path, msSwitchRoot)
		if !ok {
			out = append(out, fmt.Sprintf("ratio %s / stand-in: no successful boots to compare", pathLabels[path]))
			continue
		}
		verdict := "meets the target (<= 1.0x)"
		if q > 1.0 {
			verdict = "MISSES the target (<= 1.0x)"
		}
		line := fmt.Sprintf("ratio %s / stand-in, power-on to root mounted and switch_root (medians): %.2fx, %s", pathLabels[path], q, verdict)
		if m, ok := r.ratio(path, msRootMounted); ok {
			line += fmt.Sprintf("; power-on to the kernel's nbd0 mount: %.2fx", m)
		}
		out = append(out, line)
	}
	return out
}

func (r *report) header() []string {
	h := []string{
		"machine: " + strings.Join(r.machine, "; "),
		"board: qemu-system-x86_64 -M pc,graphics=off -accel " + r.accel + " -cpu max -m 1024 -smp 1, virtio-net-pci on a bridged tap, Debian's iPXE ROM, -boot n, virtio build disk",
		"software: " + strings.Join(r.versions, "; "),
		"sizes: " + strings.Join(r.sizes, "; "),
		fmt.Sprintf("nbd-server: copyonwrite = true, max_threads = %d; dnsmasq: dhcp-host reservation, router, dhcp-boot=pxelinux.0, enable-tftp, otherwise defaults (its ping check adds no delay for a reserved address)", r.cfg.nbdThreads),
		fmt.Sprintf("%d boot(s) per path, alternating, one at a time, fresh QEMU each; load average %s at the start, %s at the end; run time %s",
			r.cfg.runs, r.loadStart, r.loadEnd, r.elapsed.Round(time.Second)),
	}
	return h
}

// writeText prints the plain tables.
func (r *report) writeText(w io.Writer) {
	for _, h := range r.header() {
		fmt.Fprintln(w, h)
	}
	fmt.Fprintln(w, "\nboots (seconds from QEMU start, host clock):")
	writeTab(w, r.runsTable())
	fmt.Fprintln(w, "\nwhere the time goes (medians of the phases, seconds; '-' where the console didn't show the milestone):")
	writeTab(w, r.phaseTable())
	fmt.Fprintln(w)
	for _, l := range r.ratioLines() {
		fmt.Fprintln(w, l)
	}
}

func writeTab(w io.Writer, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, row := range rows {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

// markdown is the report as Markdown, for the README.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### End-to-end boot: rackboot vs a stand-in stack (`make bench-e2e`, %s)\n\n", r.started.Format("2006-01-02"))
	for _, h := range r.header() {
		k, v, _ := strings.Cut(h, ": ")
		if v == "" {
			fmt.Fprintf(&b, "- %s\n", h)
			continue
		}
		fmt.Fprintf(&b, "- **%s**: %s\n", k, v)
	}
	b.WriteString("\nBoots, seconds from QEMU start (host clock):\n\n")
	writeMarkdownTable(&b, r.runsTable())
	b.WriteString("\nWhere the time goes (medians, seconds):\n\n")
	writeMarkdownTable(&b, r.phaseTable())
	b.WriteString("\n")
	for _, l := range r.ratioLines() {
		fmt.Fprintf(&b, "**%s**\n\n", l)
	}
	return b.String()
}

func writeMarkdownTable(w io.Writer, rows [][]string) {
	for i, row := range rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
		if i == 0 {
			sep := make([]string, len(row))
			for j := range sep {
				sep[j] = "---"
			}
			fmt.Fprintf(w, "|%s|\n", strings.Join(sep, "|"))
		}
	}
}

// failures is an error if any boot failed.
func (r *report) failures() error {
	var errs []error
	for _, res := range r.results {
		if res.err != nil {
			errs = append(errs, res.err)
		}
	}
	return errors.Join(errs...)
}

// machineInfo describes the machine: CPU, cores, memory, kernel.
func machineInfo() []string {
	return []string{benchkit.HardwareInfo(), "Linux " + benchkit.KernelRelease()}
}

// versions lists what the boot runs on: QEMU, the ROM, the servers.
func versions(a e2e.Artifacts) []string {
	first := func(argv ...string) string {
		out, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return l
	}
	pkg := func(p string) string {
		out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", p).Output()
		if err != nil {
			return p + " ?"
		}
		return p + " " + string(out)
	}
	return []string{
		first("qemu-system-x86_64", "--version"),
		pkg("ipxe-qemu"), pkg("pxelinux"),
		first(a.Rackboot, "version"),
		pkg("dnsmasq-base"), pkg("nbd-server"), pkg("nbd-client"),
		kernelVersion(a),
	}
}

// kernelVersion is the board kernel's package, from the boot tree's
// MANIFEST.
func kernelVersion(a e2e.Artifacts) string {
	b, err := os.ReadFile(filepath.Join(a.Tree, "amd64", "MANIFEST"))
	if err != nil {
		return "kernel ?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "kernel" {
			return f[1] + " " + f[2]
		}
	}
	return "kernel ?"
}

// fileSizes are the sizes of what the board downloads.
func fileSizes(a e2e.Artifacts, standinInitrd int64) []string {
	size := func(p string) string {
		fi, err := os.Stat(p)
		if err != nil {
			return "?"
		}
		return fmt.Sprintf("%.1f MB", float64(fi.Size())/1e6)
	}
	return []string{
		"kernel " + size(filepath.Join(a.Tree, "amd64", "vmlinuz")),
		"rackboot initramfs " + size(filepath.Join(a.Tree, "amd64", "initramfs.cpio.gz")),
		fmt.Sprintf("stand-in initramfs %.1f MB", float64(standinInitrd)/1e6),
		"root image " + size(a.Image),
	}
}

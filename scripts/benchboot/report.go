package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
	"golang.org/x/sys/unix"
)

// report is everything the run prints.
type report struct {
	cfg     config
	rows    []row
	res     *results
	machine []string
	tools   []string
	sum     string // SHA-256 of the file
	// cacheErr says why the file wasn't held in the page cache.
	cacheErr error
	started  time.Time
	elapsed  time.Duration
}

// toolVersions returns the versions of the servers and the client.
func toolVersions(ctx context.Context, rackboot string) []string {
	var v []string
	if rackboot != "" {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, _ := exec.CommandContext(ctx, rackboot, "version").CombinedOutput()
		cancel()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		if line == "" {
			line = "rackboot (unknown version)"
		}
		v = append(v, line)
	}
	for _, pkg := range []string{"dnsmasq-base", "kea-dhcp4-server", "tftpd-hpa", "nginx", "curl"} {
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", pkg).Output()
		if err != nil || len(out) == 0 {
			v = append(v, pkg+" not installed")
			continue
		}
		v = append(v, pkg+" "+string(out))
	}
	return v
}

// best returns the best reference figure of a row.
func (r *report) best(rw row) (float64, bool) {
	var best float64
	found := false
	for _, s := range r.res.servers {
		if s == "rackboot" {
			continue
		}
		if v, ok := r.res.get(rw.key, s); ok && (!found || v > best) {
			best, found = v, true
		}
	}
	return best, found
}

// ratio returns rackboot's figure over the best reference's.
func (r *report) ratio(rw row) (float64, bool) {
	best, ok := r.best(rw)
	v, rok := r.res.get(rw.key, "rackboot")
	if !ok || !rok || best <= 0 {
		return 0, false
	}
	return v / best, true
}

func format(rw row, v float64) string {
	if rw.proto != "dhcp" && v < 100 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// table returns the header and the cells of the results table.
func (r *report) table() [][]string {
	head := append([]string{"measurement", "unit"}, r.res.servers...)
	head = append(head, "best ref", "rackboot/best", "target")
	t := [][]string{head}
	sp := specs()
	for _, rw := range r.rows {
		line := []string{rw.label, rw.unit}
		for _, s := range r.res.servers {
			switch v, ok := r.res.get(rw.key, s); {
			case ok:
				line = append(line, format(rw, v))
			case !sp[s].serves(rw.proto):
				line = append(line, "-")
			default:
				line = append(line, "n/a")
			}
		}
		if v, ok := r.best(rw); ok {
			line = append(line, format(rw, v))
		} else {
			line = append(line, "n/a")
		}
		line = append(line, benchkit.RatioCells(r.ratio(rw))...)
		t = append(t, line)
	}
	return t
}

// cpuTable returns the header and cells of the table of the servers' CPU
// time per unit of work.
func (r *report) cpuTable() [][]string {
	head := append([]string{"server CPU time", "unit"}, r.res.servers...)
	t := [][]string{head}
	sp := specs()
	for _, rw := range r.rows {
		unit := "s/GB"
		if rw.proto == "dhcp" {
			unit = "µs/handshake"
		}
		line := []string{rw.label, unit}
		for _, s := range r.res.servers {
			switch v, ok := r.res.getCPU(rw.key, s); {
			case ok && rw.proto == "dhcp":
				line = append(line, fmt.Sprintf("%.0f", v))
			case ok:
				line = append(line, fmt.Sprintf("%.2f", v))
			case !sp[s].serves(rw.proto):
				line = append(line, "-")
			default:
				line = append(line, "n/a")
			}
		}
		t = append(t, line)
	}
	return t
}

// notes returns the lines printed under the table.
// cached says where the servers read the file from.
func (r *report) cached() string {
	if r.cacheErr != nil {
		return "NOT held in the page cache (" + r.cacheErr.Error() + ")"
	}
	return "held in the page cache (mapped and locked) for the whole run"
}

func (r *report) notes() []string {
	c := r.cfg
	protos := c.protos()
	n := []string{
		"rackboot/best: rackboot's figure over the best reference's; target >= 1.00x (as shown, to two decimals) on every row. " +
			"- : the server doesn't serve that protocol; n/a: not measured (see the problems below).",
		fmt.Sprintf("server CPU time: user and system time of all the server's processes during the row, per GB transferred or "+
			"per handshake (the median over the rounds; lower is better), from /proc every %v at 10 ms resolution (a per-transfer "+
			"process that exits loses at most its last %v)", cpuSample, cpuSample),
		fmt.Sprintf("network: servers in one network namespace, clients in another, joined by a veth pair with MTU %d (%s/%d and %s/%d); "+
			"one server at a time, each started from a fresh directory; readiness by polling", c.mtu, serverIP, subnet.Bits(), clientIP, subnet.Bits()),
	}
	if c.count > 1 {
		n = append(n, fmt.Sprintf("each figure is the median of %d rounds; servers ran one at a time, in column order, each round", c.count))
	} else {
		n = append(n, "one round: servers ran one at a time, in column order; on a shared machine, use -count 3 or more for figures to publish")
	}
	if slices.Contains(protos, "dhcp") {
		n = append(n, fmt.Sprintf("DHCP: benchboot's load generator (raw Ethernet frames from %d distinct client MACs, broadcast flag and PXE "+
			"options 60/93/94/97 as a BIOS PXE ROM sends them); a handshake is DISCOVER, OFFER, REQUEST, ACK; each message is sent "+
			"up to %d times %v apart; rate = completed handshakes over the time from the first DISCOVER to the last ACK; every "+
			"measurement starts the server afresh with an empty lease database in %s (%s); the client's CPU use shares the machine's %d cores "+
			"with the server", c.handshakes, dhcpAttempts, dhcpTimeout, c.stateDir, fsType(c.stateDir), runtime.NumCPU()))
	}
	if slices.Contains(protos, "tftp") {
		line := fmt.Sprintf("TFTP: curl tftp:// --tftp-blksize N, one process per client, all started together, output to /dev/null; "+
			"MB/s = 10^6 bytes/s, summed over the clients (bytes over the wall time of the whole batch; a batch is repeated "+
			"until the batches took %v); the file is %s of random "+
			"data (sha256 %s), %s, and each server's copy was checked once", minRowTime, mib(c.size), r.sum, r.cached())
		var agreed []string
		for _, s := range r.res.servers {
			if b := r.res.blksizes[s]; b != nil {
				agreed = append(agreed, fmt.Sprintf("%s %d and %d", s, b[1468], b[65464]))
			}
		}
		if len(agreed) > 0 {
			line += "; blksize agreed for 1468 and 65464: " + strings.Join(agreed, ", ") +
				fmt.Sprintf(" (blocks above %d bytes are sent as IP fragments at MTU %d)", c.mtu-32, c.mtu)
		}
		n = append(n, line)
	}
	if slices.Contains(protos, "http") {
		n = append(n, "HTTP: a Go net/http client in the client namespace, one GET per connection, body read into a 256 KiB "+
			"buffer; MB/s as for TFTP; content checked once")
	}
	sp := specs()
	for _, s := range r.res.servers {
		for _, p := range protos {
			if note, ok := sp[s].notes[p]; ok && !slices.Contains(n, note) {
				n = append(n, note)
			}
		}
	}
	for _, s := range r.res.servers {
		for _, p := range r.res.problems[s] {
			n = append(n, s+" problem: "+p)
		}
	}
	n = append(n, fmt.Sprintf("run took %v", r.elapsed.Round(time.Second)))
	return n
}

// fsType names the file system type of dir, as far as the lease files are
// concerned.
func fsType(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown file system"
	}
	if st.Type == unix.TMPFS_MAGIC {
		return "tmpfs: fsync costs nothing"
	}
	return "not tmpfs: fsync reaches the disk"
}

func (r *report) header() []string {
	return []string{
		"rackboot boot-protocol benchmark, " + r.started.Format("2006-01-02 15:04 MST"),
		"machine: " + strings.Join(r.machine, "; "),
		"versions: " + strings.Join(r.tools, ", "),
	}
}

// writeText writes the report as aligned plain-text tables.
func (r *report) writeText(w io.Writer) {
	benchkit.Report{Header: r.header(), Tables: [][][]string{r.table(), r.cpuTable()}, Notes: r.notes()}.WriteText(w)
}

// writeMarkdown writes the report as Markdown, for the README.
func (r *report) writeMarkdown(w io.Writer) {
	notes := r.notes()
	for i, l := range notes {
		notes[i] = benchkit.EscapePipes(l)
	}
	benchkit.Report{Header: r.header(), Tables: [][][]string{r.table(), r.cpuTable()}, Notes: notes}.WriteMarkdown(w)
}

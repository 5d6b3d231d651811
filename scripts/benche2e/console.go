package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rackboot/rackboot/e2e"
)

// line is one console line with the times, from power-on, at which its
// first byte and its newline reached the host.
type line struct {
	start, end time.Duration
	text       string // without escape sequences, backspaces and CRs
}

// capture timestamps a board's console as it arrives. The guest's output
// reaches the host as it prints it (the serial port isn't paced), so an
// arrival time is when the guest got there, on the host's clock.
type capture struct {
	t0 time.Time

	mu      sync.Mutex
	lines   []line
	partial []byte
	pstart  time.Duration
	update  chan struct{} // closed and replaced when a line completes
	err     error         // why the capture ended
}

// anything matches whatever output is waiting, so that each Expect returns
// the next chunk as soon as it arrives.
var anything = regexp.MustCompile(`(?s).+`)

// startCapture reads c from now on, taking t0 as power-on, until ctx ends
// or the console closes.
func startCapture(ctx context.Context, c *e2e.Console, t0 time.Time) *capture {
	cp := &capture{t0: t0, update: make(chan struct{})}
	go func() {
		for {
			m, err := c.Expect(ctx, anything)
			if err != nil {
				cp.finish(err)
				return
			}
			cp.add(time.Since(t0), m[0])
		}
	}()
	return cp
}

func (cp *capture) add(at time.Duration, chunk string) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	completed := false
	for len(chunk) > 0 {
		if len(cp.partial) == 0 {
			cp.pstart = at
		}
		i := strings.IndexByte(chunk, '\n')
		if i < 0 {
			cp.partial = append(cp.partial, chunk...)
			break
		}
		cp.partial = append(cp.partial, chunk[:i]...)
		cp.lines = append(cp.lines, line{start: cp.pstart, end: at, text: cleanLine(string(cp.partial))})
		cp.partial = cp.partial[:0]
		chunk = chunk[i+1:]
		completed = true
	}
	if completed {
		close(cp.update)
		cp.update = make(chan struct{})
	}
}

func (cp *capture) finish(err error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if len(cp.partial) > 0 {
		cp.lines = append(cp.lines, line{start: cp.pstart, end: cp.pstart, text: cleanLine(string(cp.partial))})
		cp.partial = nil
	}
	cp.err = err
	close(cp.update)
}

// escapes are the terminal sequences firmware prints (colours, clear
// screen, reset) and backspace-erased characters.
var escapes = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z])|.?\x08|\r`)

func cleanLine(s string) string { return escapes.ReplaceAllString(s, "") }

// Lines returns the lines so far.
func (cp *capture) Lines() []line {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]line(nil), cp.lines...)
}

// errBootFailed is returned by wait when the console shows a failure.
var errBootFailed = errors.New("boot failed")

// wait waits for the first line matching done, and returns it. A line
// matching fail ends the wait with errBootFailed.
func (cp *capture) wait(ctx context.Context, done, fail *regexp.Regexp) (line, error) {
	next := 0
	for {
		cp.mu.Lock()
		lines, update, cerr := cp.lines[next:], cp.update, cp.err
		next = len(cp.lines)
		cp.mu.Unlock()
		for _, l := range lines {
			if done.MatchString(l.text) {
				return l, nil
			}
			if fail != nil && fail.MatchString(l.text) {
				return l, fmt.Errorf("%w: %q", errBootFailed, l.text)
			}
		}
		if cerr != nil {
			return line{}, fmt.Errorf("console ended before %q: %w", done, cerr)
		}
		select {
		case <-update:
		case <-ctx.Done():
			return line{}, fmt.Errorf("waiting for %q on the console: %w", done, ctx.Err())
		}
	}
}

// A milestone is a point of the boot recognised on the console.
type milestone struct {
	name string
	re   *regexp.Regexp
	// atStart takes the time the line began (the start of what it
	// announces, such as a download) rather than when it ended.
	atStart bool
}

// Milestone names, in boot order.
const (
	msDHCPStart   = "dhcp-start"
	msDHCPEnd     = "dhcp-end"
	msKernelFetch = "kernel-fetch"
	msKernelStart = "kernel-start"
	msInit        = "init"
	msRootMounted = "root-mounted"
	msSwitchRoot  = "switch_root"
	msExecInit    = "exec-init"
)

// commonMilestones are printed the same way on both paths: by iPXE (the
// ROM's DHCP), by the loader (iPXE or PXELINUX announcing the kernel
// download), by the kernel's real-mode setup and by the kernel.
var commonMilestones = []milestone{
	// iPXE prints "Configuring (net0 MAC)..." when DHCP starts and "ok"
	// once the interface is configured (IPv4 and IPv6).
	{msDHCPStart, regexp.MustCompile(`Configuring \(net`), true},
	{msDHCPEnd, regexp.MustCompile(`Configuring \(net.*ok`), false},
	// "http://…/vmlinuz... ok" (iPXE), "Loading vmlinuz... ok" (PXELINUX):
	// the line begins when the download does.
	{msKernelFetch, regexp.MustCompile(`(?i)(loading\s+|://)\S*vmlinuz`), true},
	// The kernel's setup code prints "Probing EDD" through the BIOS as soon
	// as it runs: the loader is done.
	{msKernelStart, regexp.MustCompile(`Probing EDD|Linux version`), true},
	{msInit, regexp.MustCompile(`Run /init as init process`), false},
	{msRootMounted, regexp.MustCompile(`EXT4-fs \(nbd0\): mounted`), false},
}

// findMilestones locates the milestones in order: each is the first
// matching line from the previous one found on (two can share a line).
// Missing ones are left out.
func findMilestones(lines []line, ms []milestone) map[string]time.Duration {
	at := map[string]time.Duration{}
	from := 0
	for _, m := range ms {
		for i := from; i < len(lines); i++ {
			if m.re.MatchString(lines[i].text) {
				if m.atStart {
					at[m.name] = lines[i].start
				} else {
					at[m.name] = lines[i].end
				}
				from = i
				break
			}
		}
	}
	return at
}

// A phase is the time between two milestones.
type phase struct {
	name     string
	from, to string // milestone names; "" is power-on
}

// phases are the columns of the breakdown.
var phases = []phase{
	{"firmware", "", msDHCPStart},
	{"DHCP", msDHCPStart, msDHCPEnd},
	{"loader+config", msDHCPEnd, msKernelFetch},
	{"kernel+initrd", msKernelFetch, msKernelStart},
	{"kernel to init", msKernelStart, msInit},
	{"init to root", msInit, msRootMounted},
	{"root to switch_root", msRootMounted, msSwitchRoot},
}

// span returns a phase's duration in a run, if both ends were seen.
func (p phase) span(at map[string]time.Duration) (time.Duration, bool) {
	var from time.Duration
	if p.from != "" {
		f, ok := at[p.from]
		if !ok {
			return 0, false
		}
		from = f
	}
	to, ok := at[p.to]
	if !ok {
		return 0, false
	}
	return to - from, true
}

package e2e

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// PrintTimeline writes a boot's timeline relative to the board's power-on:
// DHCP, each file with its size and transfer time, the NBD attach, the
// initramfs steps and the agent's ready.
func PrintTimeline(w io.Writer, b *Board, boot Boot) time.Duration {
	fmt.Fprintf(w, "%s  %s  boot %d  (%s)\n", b.Name, boot.IP, boot.ID, b.Arch)
	t0 := b.PoweredOn()
	fmt.Fprintf(w, "  %7.2fs  power on\n", 0.0)
	var last time.Duration
	for _, e := range boot.Events {
		at := e.Time.Sub(t0)
		last = max(last, at)
		var what string
		switch e.Kind {
		case "dhcp":
			what = "DHCP " + e.Name
		case "config":
			what = "boot config " + e.Name + " (boot starts: new token, fresh layer)"
		case "tftp", "http":
			what = fmt.Sprintf("%s %s  %s in %s", strings.ToUpper(e.Kind), e.Name, size(e.Bytes), e.Duration.Round(time.Millisecond))
			if e.Duration > 0 && e.Bytes > 0 {
				what += fmt.Sprintf(" (%.1f MB/s)", float64(e.Bytes)/e.Duration.Seconds()/1e6)
			}
		case "nbd":
			what = "NBD " + e.Name
		case "step":
			what = fmt.Sprintf("step %s %s", e.Name, e.Status)
			if e.Duration > 0 {
				what += fmt.Sprintf(" (%s)", e.Duration.Round(time.Millisecond))
			}
			if e.Error != "" {
				what += ": " + e.Error
			}
		default:
			what = e.Kind + " " + e.Name
		}
		fmt.Fprintf(w, "  %7.2fs  %s\n", at.Seconds(), what)
	}
	return last
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// StepTime returns when a boot's step (or NBD attach, as "nbd-attach")
// happened relative to the board's power-on, and whether it did.
func StepTime(b *Board, boot Boot, kind, name string) (time.Duration, bool) {
	for _, e := range boot.Events {
		if e.Kind == kind && e.Name == name {
			return e.Time.Sub(b.PoweredOn()), true
		}
	}
	return 0, false
}

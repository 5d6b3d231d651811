package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/rackboot/rackboot/initramfs/boot"
	"github.com/rackboot/rackboot/initramfs/disk"
)

// wipeProgressEvery is how often a long wipe prints its progress.
const wipeProgressEvery = 30 * time.Second

// usbSettleTimeout bounds the wait for USB disks: usb-storage scans a
// second after it binds, and slow devices take a few more.
const usbSettleTimeout = 15 * time.Second

// buildDisk adapts package disk to boot.BuildDisk: list, select, wipe,
// then GPT + ext4 with mke2fs (packed in the initramfs).
type buildDisk struct{}

func (buildDisk) Build(ctx context.Context, selector string, exclude []string) (string, error) {
	// Disks behind USB appear as the hub enumerates them, possibly after
	// the modules step looked, and a second or so after their driver
	// binds: load what they need and wait for them, or "largest" would
	// pick another disk and a late one would keep the last build's data.
	sctx, cancel := context.WithTimeout(ctx, usbSettleTimeout)
	pending := disk.SettleUSB(sctx, "/sys", rescanModules, 100*time.Millisecond)
	cancel()
	if len(pending) > 0 {
		fmt.Fprintf(os.Stdout, "rackboot: USB storage without a disk after %s: %s\n", usbSettleTimeout, strings.Join(pending, " "))
	}
	disks, err := disk.List("/sys", "/dev")
	if err != nil {
		return "", fmt.Errorf("listing disks: %w", err)
	}
	d, err := disk.Select(disks, selector, exclude...)
	if errors.Is(err, disk.ErrNoMatch) || errors.Is(err, disk.ErrNone) {
		return "", fmt.Errorf("%w: %w", boot.ErrNoDisk, err)
	}
	if err != nil {
		return "", err
	}
	// Zeroing a disk without discard can take hours: say how far it got.
	progress := disk.ProgressPrinter(os.Stdout, "rackboot: wiping "+d.Path, wipeProgressEvery, nil)
	w, err := disk.Wipe(ctx, d.Path, disk.WipeOptions{Progress: progress})
	if err != nil {
		return "", fmt.Errorf("wiping %s: %w", d.Path, err)
	}
	fmt.Fprintf(os.Stdout, "rackboot: wiped %s (%d bytes) by %s in %s, found %v\n", d.Path, w.Size, w.Method, w.Duration, w.Found)
	res, err := disk.Build(ctx, d.Path, disk.BuildOptions{Prezeroed: w.ZeroFilled})
	if err != nil {
		return "", fmt.Errorf("building %s: %w", d.Path, err)
	}
	if res.Partition == "" {
		return "", fmt.Errorf("building %s: no partition device", d.Path)
	}
	return res.Partition, nil
}

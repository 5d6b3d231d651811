package disk

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// usbTree makes sysfs/bus/usb/drivers/DRIVER/IFACE for each interface,
// with the driver's own entries beside them.
func usbTree(t *testing.T, driver string, ifaces ...string) string {
	t.Helper()
	sysfs := t.TempDir()
	dir := filepath.Join(sysfs, "bus", "usb", "drivers", driver)
	for _, name := range append([]string{"bind", "module", "uevent"}, ifaces...) {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return sysfs
}

// addSCSI gives an interface a SCSI device of a type, as the scan does,
// and its block device if block isn't empty (sd_mod or sr_mod loaded).
func addSCSI(t *testing.T, sysfs, driver, iface, lun, typ, block string) {
	t.Helper()
	dir := filepath.Join(sysfs, "bus", "usb", "drivers", driver, iface, "host4", "target4:0:0", lun)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "type"), []byte(typ+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if block != "" {
		if err := os.MkdirAll(filepath.Join(dir, "block", block), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// addUSBDisk gives an interface its SCSI disk and block device.
func addUSBDisk(t *testing.T, sysfs, driver, iface, disk string) {
	t.Helper()
	addSCSI(t, sysfs, driver, iface, "4:0:0:0", "0", disk)
}

func TestPendingUSB(t *testing.T) {
	t.Parallel()
	if got := PendingUSB(t.TempDir()); got != nil {
		t.Errorf("no USB at all: pending %q", got)
	}
	sysfs := usbTree(t, "usb-storage", "1-1:1.0", "1-2:1.0")
	if got, want := PendingUSB(sysfs), []string{"1-1:1.0", "1-2:1.0"}; !slices.Equal(got, want) {
		t.Errorf("pending %q; want %q", got, want)
	}
	addUSBDisk(t, sysfs, "usb-storage", "1-2:1.0", "sda")
	if got, want := PendingUSB(sysfs), []string{"1-1:1.0"}; !slices.Equal(got, want) {
		t.Errorf("pending %q; want %q", got, want)
	}
	// A virtual CD-ROM without sr_mod gets no block device: not waited
	// for. A disk whose block device hasn't come is.
	addSCSI(t, sysfs, "usb-storage", "1-1:1.0", "4:0:0:0", "5", "")
	if got := PendingUSB(sysfs); got != nil {
		t.Errorf("pending %q; want none with a CD-ROM", got)
	}
	addSCSI(t, sysfs, "usb-storage", "1-1:1.0", "4:0:0:1", "0", "")
	if got, want := PendingUSB(sysfs), []string{"1-1:1.0"}; !slices.Equal(got, want) {
		t.Errorf("pending %q; want %q for a disk without its block device", got, want)
	}
}

// SettleUSB looks until the late disk shows up, rescanning each time.
func TestSettleUSB(t *testing.T) {
	t.Parallel()
	sysfs := usbTree(t, "uas", "2-1:1.0")
	rescans := 0
	rescan := func() {
		rescans++
		if rescans == 3 { // the scan finishes after a few looks
			addUSBDisk(t, sysfs, "uas", "2-1:1.0", "sdb")
		}
	}
	if pending := SettleUSB(t.Context(), sysfs, rescan, time.Millisecond); pending != nil || rescans != 3 {
		t.Errorf("SettleUSB = %q after %d rescans; want nil after 3", pending, rescans)
	}

	// A device that never gets its disk: given up when ctx ends.
	sysfs = usbTree(t, "usb-storage", "3-1:1.0")
	ctx, cancel := context.WithCancel(t.Context())
	rescans = 0
	giveUp := func() {
		if rescans++; rescans == 5 {
			cancel()
		}
	}
	if pending := SettleUSB(ctx, sysfs, giveUp, time.Millisecond); !slices.Equal(pending, []string{"3-1:1.0"}) {
		t.Errorf("SettleUSB = %q; want the interface without a disk", pending)
	}
}

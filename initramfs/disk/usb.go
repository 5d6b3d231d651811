package disk

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// usbStorageDrivers are the drivers of USB mass storage interfaces.
var usbStorageDrivers = []string{"usb-storage", "uas"}

// PendingUSB returns the USB mass storage interfaces under sysfs
// (normally "/sys") whose disks aren't there yet, sorted: no SCSI device
// yet, or a disk-type one without its block device. usb-storage waits
// delay_use (a second by default) before it scans a new device, and the
// kernel doesn't wait for that scan when the module load returns: until
// then the disk is missing from List, and "largest" would pick another.
// Devices of other SCSI types (a BMC's virtual CD-ROM) are not waited for.
func PendingUSB(sysfs string) []string {
	var pending []string
	for _, drv := range usbStorageDrivers {
		dir := filepath.Join(sysfs, "bus", "usb", "drivers", drv)
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			// Interfaces are links named like 1-1:1.0; the driver's
			// other entries (bind, module, uevent) have no colon.
			if !strings.Contains(e.Name(), ":") {
				continue
			}
			if !settled(filepath.Join(dir, e.Name())) {
				pending = append(pending, e.Name())
			}
		}
	}
	slices.Sort(pending)
	return pending
}

// settled reports whether a USB storage interface's SCSI scan is done
// and each of its disk-type devices has its block device.
func settled(iface string) bool {
	devs, _ := filepath.Glob(filepath.Join(iface, "host*", "target*", "*:*:*:*"))
	if len(devs) == 0 {
		return false
	}
	for _, d := range devs {
		b, _ := os.ReadFile(filepath.Join(d, "type"))
		switch strings.TrimSpace(string(b)) {
		case "0", "7", "14": // disk, optical memory, reduced block commands
		default:
			continue
		}
		if blocks, _ := filepath.Glob(filepath.Join(d, "block", "*")); len(blocks) == 0 {
			return false
		}
	}
	return true
}

// SettleUSB waits until every USB mass storage interface has its disk,
// calling rescan (which loads the modules new devices need, such as
// sd_mod once the SCSI device appears) before each look, every poll. It
// returns the interfaces still without a disk when ctx is done, or nil.
// Without USB storage it returns after one look.
func SettleUSB(ctx context.Context, sysfs string, rescan func(), poll time.Duration) []string {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		rescan()
		pending := PendingUSB(sysfs)
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return pending
		case <-t.C:
		}
	}
}

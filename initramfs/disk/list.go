package disk

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Disk is a whole disk as sysfs describes it. Its zero value is not a disk.
type Disk struct {
	// Name is the kernel's name (vda, sda, nvme0n1, mmcblk0).
	Name string
	// Path is the device node (/dev/vda).
	Path string
	// Size is in bytes.
	Size int64
	// Serial is the serial number the device reports, if any (virtio-blk
	// serial, NVMe and MMC serial attribute, SCSI VPD page 0x80).
	Serial string
	// Model is the model (SCSI, NVMe) or product name (MMC), if any.
	Model string
	// Removable is the kernel's removable flag (most USB sticks and SD
	// card readers; not eMMC, not most USB hard disks).
	Removable bool
	// Rotational is the queue's rotational flag.
	Rotational bool
	// ReadOnly is the kernel's read-only flag.
	ReadOnly bool
	// Discard is true when the device accepts discards
	// (queue/discard_max_bytes > 0).
	Discard bool
	// IDs are the disk's names in /dev/disk/by-id (without the directory),
	// sorted. Without udev, as in the initramfs, that directory is missing;
	// then the names udev would give virtio (virtio-SERIAL), NVMe
	// (nvme-MODEL_SERIAL) and MMC (mmc-NAME_SERIAL) disks are derived
	// from sysfs.
	IDs []string
	// PathIDs are the disk's names in /dev/disk/by-path, sorted (never
	// derived).
	PathIDs []string
	// Holders are the devices stacked on the disk or on one of its
	// partitions (dm-0, md0): a disk with holders is in use.
	Holders []string
}

// List returns the whole disks under sysfs (normally "/sys") whose device
// nodes are in dev (normally "/dev"), sorted by name, with their by-id and
// by-path names from dev/disk. Devices that are never a build disk are
// left out: loop, ram, zram, nbd, optical and floppy drives, device-mapper
// and md devices, MTD, and the eMMC boot and RPMB areas (mmcblk0boot0,
// mmcblk0rpmb). List only reads; it is safe for concurrent use.
func List(sysfs, dev string) ([]Disk, error) {
	blockDir := filepath.Join(sysfs, "block")
	entries, err := os.ReadDir(blockDir)
	if err != nil {
		return nil, fmt.Errorf("listing disks: %w", err)
	}
	byID, err := readLinks(filepath.Join(dev, "disk", "by-id"))
	if err != nil {
		return nil, err
	}
	byPath, err := readLinks(filepath.Join(dev, "disk", "by-path"))
	if err != nil {
		return nil, err
	}
	var disks []Disk
	for _, e := range entries {
		name := e.Name()
		if neverBuildDisk(name) != "" {
			continue
		}
		dir := filepath.Join(blockDir, name)
		sectors, err := strconv.ParseInt(attr(dir, "size"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("reading size of %s: %w", name, err)
		}
		discardMax := attr(dir, "queue/discard_max_bytes")
		d := Disk{
			Name:       name,
			Path:       filepath.Join(dev, name),
			Size:       sectors * 512, // sysfs counts 512-byte units whatever the sector size
			Serial:     serial(dir),
			Model:      firstAttr(dir, "device/model", "device/name"),
			Removable:  attr(dir, "removable") == "1",
			Rotational: attr(dir, "queue/rotational") == "1",
			ReadOnly:   attr(dir, "ro") == "1",
			Discard:    discardMax != "" && discardMax != "0",
			IDs:        byID[name],
			PathIDs:    byPath[name],
			Holders:    holders(dir, name),
		}
		if len(d.IDs) == 0 {
			d.IDs = derivedIDs(d, dir)
		}
		disks = append(disks, d)
	}
	slices.SortFunc(disks, func(a, b Disk) int { return strings.Compare(a.Name, b.Name) })
	return disks, nil
}

var neverKind = []struct{ prefix, why string }{
	{"loop", "loop device"},
	{"ram", "RAM disk"},
	{"zram", "compressed RAM disk"},
	{"nbd", "network block device"},
	{"sr", "optical drive"},
	{"fd", "floppy drive"},
	{"dm-", "device-mapper device"},
	{"md", "md RAID device"},
	{"mtdblock", "MTD flash"},
	{"ubiblock", "UBI volume"},
	{"pmem", "persistent memory"},
}

// neverBuildDisk says why the disk called name can never be the build disk,
// or returns "".
func neverBuildDisk(name string) string {
	if isMMCArea(name) {
		return "eMMC boot, RPMB or general-purpose area"
	}
	for _, k := range neverKind {
		if strings.HasPrefix(name, k.prefix) {
			return k.why
		}
	}
	return ""
}

// isMMCArea reports whether name is one of an eMMC's hardware areas other
// than its user area: mmcblkNbootM, mmcblkNrpmb, mmcblkNgpM.
func isMMCArea(name string) bool {
	rest, ok := strings.CutPrefix(name, "mmcblk")
	if !ok {
		return false
	}
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == 0 {
		return false
	}
	rest = rest[i:]
	if rest == "rpmb" {
		return true
	}
	for _, p := range []string{"boot", "gp"} {
		if n, ok := strings.CutPrefix(rest, p); ok && n != "" && strings.Trim(n, "0123456789") == "" {
			return true
		}
	}
	return false
}

// attr returns the trimmed contents of a sysfs attribute, or "" if it is
// missing or unreadable.
func attr(dir, name string) string {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func firstAttr(dir string, names ...string) string {
	for _, n := range names {
		if v := attr(dir, n); v != "" {
			return v
		}
	}
	return ""
}

// serial reads the serial number: virtio-blk has it in the disk's
// directory, NVMe (the controller) and MMC in device/, SCSI disks in VPD
// page 0x80 (a 4-byte header with the length in byte 3).
func serial(dir string) string {
	if s := firstAttr(dir, "serial", "device/serial"); s != "" {
		return s
	}
	b, err := os.ReadFile(filepath.Join(dir, "device", "vpd_pg80"))
	if err != nil || len(b) < 4 || b[1] != 0x80 {
		return ""
	}
	n := min(int(b[3]), len(b)-4)
	return strings.TrimSpace(strings.TrimRight(string(b[4:4+n]), "\x00"))
}

// holders returns the holders of the disk and of its partitions.
func holders(dir, name string) []string {
	var out []string
	add := func(d string) {
		es, _ := os.ReadDir(filepath.Join(d, "holders"))
		for _, e := range es {
			out = append(out, e.Name())
		}
	}
	add(dir)
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if strings.HasPrefix(e.Name(), name) {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err == nil {
				add(filepath.Join(dir, e.Name()))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// readLinks maps the base name of each symbolic link's target in dir to
// the links' names, sorted. Links to partitions map to the partition's
// name, which List never looks up. A missing dir is an empty map.
func readLinks(dir string) (map[string][]string, error) {
	es, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	m := make(map[string][]string)
	for _, e := range es {
		t, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // not a link
		}
		m[filepath.Base(t)] = append(m[filepath.Base(t)], e.Name())
	}
	for _, v := range m {
		slices.Sort(v)
	}
	return m, nil
}

// derivedIDs returns the by-id names udev's 60-persistent-storage.rules
// would give d, for the kinds of disks whose names need only sysfs.
func derivedIDs(d Disk, dir string) []string {
	switch {
	case strings.HasPrefix(d.Name, "vd") && d.Serial != "":
		return []string{"virtio-" + udevEscape(d.Serial)}
	case strings.HasPrefix(d.Name, "nvme") && d.Serial != "" && d.Model != "":
		return []string{"nvme-" + udevEscape(d.Model) + "_" + udevEscape(d.Serial)}
	case strings.HasPrefix(d.Name, "mmcblk") && d.Serial != "":
		if n := attr(dir, "device/name"); n != "" {
			return []string{"mmc-" + udevEscape(n) + "_" + udevEscape(d.Serial)}
		}
	}
	return nil
}

// udevEscape does what udev does to a value in a by-id name: trims it,
// turns each run of whitespace into one "_", and replaces characters
// outside [A-Za-z0-9#+-.:=@_] with "_".
func udevEscape(s string) string {
	var b strings.Builder
	space := false
	for _, r := range strings.TrimSpace(s) {
		switch {
		case r == ' ' || r == '\t' || r == '\n':
			space = true
			continue
		case space:
			b.WriteByte('_')
			space = false
		}
		if r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("#+-.:=@_", r)) {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// Mounted returns the names of the whole disks (as in Disk.Name) that have
// a mounted filesystem on them or on one of their partitions, according to
// mountinfo (normally "/proc/self/mountinfo") and sysfs (normally "/sys").
// Pass them to Select as exclusions. Filesystems without a block device
// (tmpfs, overlay, NFS) are ignored.
func Mounted(sysfs, mountinfo string) ([]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		dev := fields[2] // major:minor
		if strings.HasPrefix(dev, "0:") {
			continue
		}
		dir, err := filepath.EvalSymlinks(filepath.Join(sysfs, "dev", "block", dev))
		if err != nil {
			continue // not a block device sysfs knows
		}
		if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
			dir = filepath.Dir(dir)
		}
		out = append(out, filepath.Base(dir))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", mountinfo, err)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

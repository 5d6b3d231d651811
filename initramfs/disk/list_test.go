package disk

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeDisk is one disk of a fake sysfs and /dev tree.
type fakeDisk struct {
	name    string
	size    int64             // bytes
	attrs   map[string]string // sysfs attributes relative to /sys/block/NAME
	byID    []string          // /dev/disk/by-id links to the disk
	byPath  []string          // /dev/disk/by-path links to the disk
	parts   []string          // partition names
	holders map[string]string // partition ("" for the disk) → holder
}

// fakeTree builds a sysfs and a /dev tree in a temporary directory, the
// way the kernel and udev lay them out, and returns their roots.
func fakeTree(t *testing.T, disks []fakeDisk) (sysfs, dev string) {
	t.Helper()
	root := t.TempDir()
	sysfs, dev = filepath.Join(root, "sys"), filepath.Join(root, "dev")
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range disks {
		dir := filepath.Join(sysfs, "block", d.name)
		write(filepath.Join(dir, "size"), strconv.FormatInt(d.size/512, 10))
		defaults := map[string]string{"removable": "0", "ro": "0", "queue/rotational": "0", "queue/discard_max_bytes": "0"}
		for k, v := range defaults {
			if _, ok := d.attrs[k]; !ok {
				write(filepath.Join(dir, k), v)
			}
		}
		for k, v := range d.attrs {
			write(filepath.Join(dir, k), v)
		}
		if err := os.MkdirAll(filepath.Join(dir, "holders"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range d.parts {
			write(filepath.Join(dir, p, "partition"), "1")
			write(filepath.Join(dir, p, "size"), "2048")
			if err := os.MkdirAll(filepath.Join(dir, p, "holders"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for part, h := range d.holders {
			hd := filepath.Join(dir, part, "holders", h)
			link("../../../"+h, hd)
		}
		for _, id := range d.byID {
			link("../../"+d.name, filepath.Join(dev, "disk", "by-id", id))
			link("../../"+d.name+"1", filepath.Join(dev, "disk", "by-id", id+"-part1"))
		}
		for _, id := range d.byPath {
			link("../../"+d.name, filepath.Join(dev, "disk", "by-path", id))
		}
	}
	return sysfs, dev
}

const gb = 1 << 30

// boardDisks is a board with every kind of disk List and Select meet.
var boardDisks = []fakeDisk{
	{name: "vda", size: 64 * gb, byID: []string{"virtio-rb-build-1"}, byPath: []string{"pci-0000:00:05.0", "virtio-pci-0000:00:05.0"},
		attrs: map[string]string{"serial": "rb-build-1", "queue/discard_max_bytes": "2147483136", "queue/rotational": "1"}, parts: []string{"vda1"}},
	// No by-id links: its by-id name is derived as udev would make it.
	{name: "vdb", size: 8 * gb, attrs: map[string]string{"device/serial": "rb-scratch"}},
	{name: "nvme0n1", size: 256 * gb, byID: []string{"nvme-SAMSUNG_MZVLB256HAHQ-000L7_S3TNNX0K123456", "nvme-eui.0025388b91b2a0c1"},
		attrs: map[string]string{"device/serial": "S3TNNX0K123456      ", "device/model": "SAMSUNG MZVLB256HAHQ-000L7              ",
			"queue/discard_max_bytes": "2199023255040"}, parts: []string{"nvme0n1p1", "nvme0n1p2"}},
	{name: "mmcblk0", size: 32 * gb, attrs: map[string]string{"device/serial": "0x1234abcd", "device/name": "DG4032"}, parts: []string{"mmcblk0p1"}},
	// The eMMC boot areas: writable here, still never chosen.
	{name: "mmcblk0boot0", size: 4 << 20, byID: []string{"mmc-DG4032_0x1234abcd-boot0"}},
	{name: "mmcblk0boot1", size: 4 << 20},
	{name: "mmcblk0rpmb", size: 4 << 20},
	{name: "sda", size: 1024 * gb, byID: []string{"usb-SanDisk_Extreme_Pro_1234567890AB-0:0"}, byPath: []string{"pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0"},
		attrs: map[string]string{"removable": "1", "device/model": "Extreme Pro     ",
			"device/vpd_pg80": "\x00\x80\x00\x0c1234567890AB"}},
	{name: "sdb", size: 2048 * gb, attrs: map[string]string{"ro": "1", "device/model": "WRITE PROTECTED"}},
	{name: "sdc", size: 300 * gb, parts: []string{"sdc1"}, holders: map[string]string{"sdc1": "dm-0"}},
	{name: "dm-0", size: 300 * gb},
	{name: "md0", size: 300 * gb},
	{name: "loop0", size: 4096 * gb},
	{name: "ram0", size: 4096 * gb},
	{name: "zram0", size: 4096 * gb},
	{name: "nbd0", size: 4096 * gb, byID: []string{"nbd-root"}},
	{name: "nbd1", size: 0},
	{name: "sr0", size: 1 * gb, attrs: map[string]string{"removable": "1"}},
}

func TestList(t *testing.T) {
	t.Parallel()
	sysfs, dev := fakeTree(t, boardDisks)
	got, err := List(sysfs, dev)
	if err != nil {
		t.Fatal(err)
	}
	p := func(n string) string { return filepath.Join(dev, n) }
	want := []Disk{
		{Name: "mmcblk0", Path: p("mmcblk0"), Size: 32 * gb, Serial: "0x1234abcd", Model: "DG4032", IDs: []string{"mmc-DG4032_0x1234abcd"}},
		{Name: "nvme0n1", Path: p("nvme0n1"), Size: 256 * gb, Serial: "S3TNNX0K123456", Model: "SAMSUNG MZVLB256HAHQ-000L7", Discard: true,
			IDs: []string{"nvme-SAMSUNG_MZVLB256HAHQ-000L7_S3TNNX0K123456", "nvme-eui.0025388b91b2a0c1"}},
		{Name: "sda", Path: p("sda"), Size: 1024 * gb, Serial: "1234567890AB", Model: "Extreme Pro", Removable: true,
			IDs: []string{"usb-SanDisk_Extreme_Pro_1234567890AB-0:0"}, PathIDs: []string{"pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0"}},
		{Name: "sdb", Path: p("sdb"), Size: 2048 * gb, Model: "WRITE PROTECTED", ReadOnly: true},
		{Name: "sdc", Path: p("sdc"), Size: 300 * gb, Holders: []string{"dm-0"}},
		{Name: "vda", Path: p("vda"), Size: 64 * gb, Serial: "rb-build-1", Rotational: true, Discard: true,
			IDs: []string{"virtio-rb-build-1"}, PathIDs: []string{"pci-0000:00:05.0", "virtio-pci-0000:00:05.0"}},
		{Name: "vdb", Path: p("vdb"), Size: 8 * gb, Serial: "rb-scratch", IDs: []string{"virtio-rb-scratch"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List mismatch (-want +got):\n%s", diff)
	}
}

func TestListNoDevDisk(t *testing.T) {
	t.Parallel()
	// No /dev/disk at all, as in an initramfs without udev.
	sysfs, _ := fakeTree(t, []fakeDisk{{name: "vda", size: gb, attrs: map[string]string{"serial": "abc def/1"}}})
	got, err := List(sysfs, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !cmp.Equal(got[0].IDs, []string{"virtio-abc_def_1"}) {
		t.Errorf("List = %+v; want vda with derived ID virtio-abc_def_1", got)
	}
}

func TestSelect(t *testing.T) {
	t.Parallel()
	sysfs, dev := fakeTree(t, boardDisks)
	disks, err := List(sysfs, dev)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		selector string
		exclude  []string
		want     string   // disk name; "" for an error
		wantErr  error    // errors.Is target, if any
		msg      []string // substrings of the error message
	}{
		{name: "largest", selector: "largest", want: "nvme0n1"},
		{name: "empty means largest", selector: "", want: "nvme0n1"},
		{name: "largest without root disk", selector: "largest", exclude: []string{"/dev/nvme0n1p2", "nbd0"}, want: "vda"},
		{name: "largest without two", selector: "largest", exclude: []string{"nvme0n1", "/dev/vda"}, want: "mmcblk0"},
		// sdb and sdc hold data no wipe can reach: not "no disk".
		{name: "mmc partition excludes the disk", selector: "largest", exclude: []string{"nvme0n1", "vda", "vdb", "mmcblk0p1"},
			wantErr: ErrUnwipeable, msg: []string{
				"sda (1024.0 GiB): removable", "sdb (2048.0 GiB): read-only", "sdc (300.0 GiB): in use by dm-0",
				"mmcblk0 (32.0 GiB): excluded (mmcblk0p1)", "vda (64.0 GiB): excluded (vda)"}},
		{name: "only removable left", selector: "largest", exclude: []string{"nvme0n1", "vda", "vdb", "mmcblk0", "sdb", "sdc"},
			wantErr: ErrNoMatch, msg: []string{"sda (1024.0 GiB): removable"}},
		{name: "by-id removable", selector: "by-id:usb-SanDisk_Extreme_Pro_1234567890AB-0:0", want: "sda"},
		{name: "by-id full path", selector: "by-id:/dev/disk/by-id/virtio-rb-build-1", want: "vda"},
		{name: "by-id derived", selector: "by-id:virtio-rb-scratch", want: "vdb"},
		{name: "by-id derived mmc", selector: "by-id:mmc-DG4032_0x1234abcd", want: "mmcblk0"},
		{name: "by-id eui", selector: "by-id:nvme-eui.0025388b91b2a0c1", want: "nvme0n1"},
		{name: "by-id partition link", selector: "by-id:virtio-rb-build-1-part1", wantErr: ErrNoMatch,
			msg: []string{"vda (64.0 GiB, by-id virtio-rb-build-1)", "sdb (2048.0 GiB, by-id none)"}},
		{name: "by-id boot area", selector: "by-id:mmc-DG4032_0x1234abcd-boot0", wantErr: ErrNoMatch},
		{name: "by-id nbd", selector: "by-id:nbd-root", wantErr: ErrNoMatch},
		{name: "by-id excluded", selector: "by-id:virtio-rb-build-1", exclude: []string{"vda1"}, wantErr: ErrNoMatch,
			msg: []string{"vda is excluded (vda1)"}},
		{name: "by-path", selector: "by-path:pci-0000:00:05.0", want: "vda"},
		{name: "by-path missing", selector: "by-path:pci-0000:00:06.0", wantErr: ErrNoMatch,
			msg: []string{"by-path pci-0000:00:05.0, virtio-pci-0000:00:05.0"}},
		{name: "serial nvme", selector: "serial:S3TNNX0K123456", want: "nvme0n1"},
		{name: "serial mmc", selector: "serial:0x1234abcd", want: "mmcblk0"},
		{name: "serial scsi", selector: "serial:1234567890AB", want: "sda"},
		{name: "serial read-only", selector: "serial:nope", wantErr: ErrNoMatch, msg: []string{"vda (64.0 GiB, serial rb-build-1)"}},
		{name: "none", selector: "none", wantErr: ErrNone},
		{name: "unknown kind", selector: "biggest", msg: []string{`selector "biggest"`}},
		{name: "empty value", selector: "by-id:", msg: []string{`selector "by-id:"`}},
		{name: "largest with value", selector: "largest:1", msg: []string{`selector "largest:1"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Select(disks, tt.selector, tt.exclude...)
			if tt.want != "" {
				if err != nil || got.Name != tt.want {
					t.Fatalf("Select(%q, %q) = %q, %v; want %q", tt.selector, tt.exclude, got.Name, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Select(%q, %q) = %q; want an error", tt.selector, tt.exclude, got.Name)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Select(%q) error %v; want %v", tt.selector, err, tt.wantErr)
			}
			for _, m := range tt.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("Select(%q) error %q; want it to contain %q", tt.selector, err, m)
				}
			}
		})
	}
}

// A disk the selector names that holds data no wipe can reach is an
// error of its own: the board must not boot as if it had no disk.
func TestSelectUnwipeable(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		d    Disk
		want error
	}{
		{Disk{Name: "sdb", Size: 1 << 30, Serial: "S", ReadOnly: true}, ErrUnwipeable},
		{Disk{Name: "sdc", Size: 1 << 30, Serial: "S", Holders: []string{"dm-0"}}, ErrUnwipeable},
		{Disk{Name: "sdd", Size: 0, Serial: "S"}, ErrNoMatch},
	} {
		for _, sel := range []string{"serial:S", "largest"} {
			if _, err := Select([]Disk{tt.d}, sel); !errors.Is(err, tt.want) {
				t.Errorf("Select(%+v, %q) error %v; want %v", tt.d, sel, err, tt.want)
			}
		}
	}
}

// TestSelectNeverChooses feeds Select disks List would have left out, as a
// caller building its own list could: it must still refuse them.
func TestSelectNeverChooses(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"loop0", "ram0", "zram0", "nbd0", "mmcblk0boot0", "mmcblk1boot1", "mmcblk0rpmb", "mmcblk12gp3", "dm-3", "md127", "sr0"} {
		disks := []Disk{{Name: name, Path: "/dev/" + name, Size: 1 << 40, Serial: "S", IDs: []string{"id"}}}
		for _, sel := range []string{"largest", "serial:S", "by-id:id"} {
			if got, err := Select(disks, sel); err == nil {
				t.Errorf("Select([%s], %q) = %q; want an error", name, sel, got.Name)
			}
		}
	}
	twins := []Disk{{Name: "sda", Size: 1, Serial: "X"}, {Name: "sdb", Size: 1, Serial: "X"}}
	if _, err := Select(twins, "serial:X"); err == nil || !strings.Contains(err.Error(), "matches 2 disks (sda, sdb)") {
		t.Errorf("Select(twins, serial:X) error %v; want an ambiguity error", err)
	}
}

func TestMounted(t *testing.T) {
	t.Parallel()
	sysfs, _ := fakeTree(t, boardDisks)
	links := map[string]string{
		"259:2": "../../block/nvme0n1/nvme0n1p2",
		"43:0":  "../../block/nbd0",
		"8:0":   "../../block/sda",
		"8:33":  "../../block/sdc/sdc1",
	}
	for dev, target := range links {
		if err := os.MkdirAll(filepath.Join(sysfs, "block", strings.TrimPrefix(target, "../../block/")), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.Count(target, "/") == 4 {
			if err := os.WriteFile(filepath.Join(sysfs, "block", strings.TrimPrefix(target, "../../block/"), "partition"), []byte("2\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Join(sysfs, "dev", "block"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(sysfs, "dev", "block", dev)); err != nil {
			t.Fatal(err)
		}
	}
	mountinfo := filepath.Join(t.TempDir(), "mountinfo")
	content := `22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 43:0 / /nbdroot ro - ext4 /dev/nbd0 ro
25 22 8:0 / /mnt\040usb rw - vfat /dev/sda rw
26 22 253:0 / /lvm rw - ext4 /dev/mapper/vg-lv rw
27 22 8:33 / /data rw - xfs /dev/sdc1 rw
28 22 0:44 / /tmp rw - tmpfs tmpfs rw
`
	if err := os.WriteFile(mountinfo, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Mounted(sysfs, mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"nbd0", "nvme0n1", "sda", "sdc"}, got); diff != "" {
		t.Errorf("Mounted mismatch (-want +got):\n%s", diff)
	}
}

func TestPartitionPath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tt := range []struct{ disk, want string }{
		{"vda", "vda1"}, {"sda", "sda1"}, {"nvme0n1", "nvme0n1p1"}, {"mmcblk0", "mmcblk0p1"}, {"loop7", "loop7p1"}, {"nbd0", "nbd0p1"},
	} {
		p := filepath.Join(dir, tt.disk)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := PartitionPath(p, 1)
		if err != nil || got != filepath.Join(dir, tt.want) {
			t.Errorf("PartitionPath(%q, 1) = %q, %v; want %q", p, got, err, filepath.Join(dir, tt.want))
		}
	}
	// A by-id link resolves to the disk first.
	if err := os.Symlink("nvme0n1", filepath.Join(dir, "nvme-X_Y")); err != nil {
		t.Fatal(err)
	}
	if got, err := PartitionPath(filepath.Join(dir, "nvme-X_Y"), 1); err != nil || got != filepath.Join(dir, "nvme0n1p1") {
		t.Errorf("PartitionPath(by-id link) = %q, %v; want nvme0n1p1", got, err)
	}
}

func TestUdevEscape(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"  SAMSUNG MZVLB256HAHQ-000L7   ": "SAMSUNG_MZVLB256HAHQ-000L7",
		"a  b\tc":                         "a_b_c",
		"x/y\\z":                          "x_y_z",
		"ünï":                             "_n_",
		"#+-.:=@_":                        "#+-.:=@_",
	} {
		if got := udevEscape(in); got != want {
			t.Errorf("udevEscape(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestNeverBuildDisk(t *testing.T) {
	t.Parallel()
	for name, never := range map[string]bool{
		"mmcblk0": false, "mmcblk10": false, "mmcblk0boot0": true, "mmcblk0boot": false, "mmcblk0rpmb": true,
		"mmcblk0gp1": true, "mmcblkboot0": false, "vda": false, "nvme0n1": false, "nbd15": true, "zram0": true, "sda": false,
	} {
		if got := neverBuildDisk(name) != ""; got != never {
			t.Errorf("neverBuildDisk(%q) = %q; want never=%v", name, neverBuildDisk(name), never)
		}
	}
}

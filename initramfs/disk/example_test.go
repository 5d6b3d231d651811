package disk_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/rackboot/rackboot/initramfs/disk"
)

// The initramfs's init rebuilds the build disk on every boot: it excludes
// the NBD root and whatever is mounted, picks the disk the board's
// configuration names, wipes it and makes a fresh filesystem.
func Example() {
	ctx := context.Background()
	disks, err := disk.List("/sys", "/dev")
	if err != nil {
		log.Fatal(err)
	}
	mounted, err := disk.Mounted("/sys", "/proc/self/mountinfo")
	if err != nil {
		log.Fatal(err)
	}
	d, err := disk.Select(disks, "largest", append(mounted, "nbd0")...)
	if errors.Is(err, disk.ErrNone) {
		return // this board has no build disk
	}
	if err != nil {
		log.Fatal(err)
	}
	wiped, err := disk.Wipe(ctx, d.Path, disk.WipeOptions{})
	if err != nil {
		log.Fatal(err)
	}
	res, err := disk.Build(ctx, d.Path, disk.BuildOptions{Prezeroed: wiped.ZeroFilled})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("mount", res.Partition, "(ext4, label", res.Label+")")
}

func ExampleSelect() {
	disks := []disk.Disk{
		{Name: "mmcblk0", Path: "/dev/mmcblk0", Size: 32 << 30},
		{Name: "mmcblk0boot0", Path: "/dev/mmcblk0boot0", Size: 4 << 20},
		{Name: "sda", Path: "/dev/sda", Size: 1 << 40, Removable: true, IDs: []string{"usb-SanDisk_Extreme_1234"}},
		{Name: "nvme0n1", Path: "/dev/nvme0n1", Size: 512 << 30},
	}
	for _, sel := range []string{"largest", "by-id:usb-SanDisk_Extreme_1234"} {
		d, err := disk.Select(disks, sel, "/dev/nvme0n1p2")
		fmt.Println(sel, "→", d.Path, err)
	}
	_, err := disk.Select(disks, "none")
	fmt.Println(errors.Is(err, disk.ErrNone))
	// Output:
	// largest → /dev/mmcblk0 <nil>
	// by-id:usb-SanDisk_Extreme_1234 → /dev/sda <nil>
	// true
}

package uboot_test

import (
	"fmt"
	"time"

	"github.com/rackboot/rackboot/uboot"
)

func ExampleScript() {
	// U-Boot's distro boot fetches boot.scr.uimg over TFTP and runs it;
	// this one hands over to U-Boot's PXELINUX-style config lookup.
	img := uboot.Script("rackboot", "pxe get && pxe boot\n", time.Unix(1700000000, 0))
	fmt.Printf("%d bytes, magic % x, name %q\n", len(img), img[:4], img[32:40])
	// Output:
	// 92 bytes, magic 27 05 19 56, name "rackboot"
}

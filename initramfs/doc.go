// Package initramfs holds rackboot's board initramfs: the init program
// (init/) that brings a board from kernel start to its network root, and
// the packages it is made of, plus the packer (mkinitramfs/) that
// scripts/kernel.sh uses to build a reproducible cpio.
//
// The init runs these steps, each timed, printed on the console and
// reported to the appliance (POST /api/v1/report):
//
//	mount    proc, sys, devtmpfs and run
//	cmdline  parse /proc/cmdline (rackboot.* parameters)
//	modules  load the modules the hardware needs (their aliases matched to
//	         the devices' modaliases) and nbd, ext4, crc32c; runs while
//	         the network step waits for its interface and DHCP
//	network  DHCP on the boot interface (BOOTIF= or the first with carrier)
//	nbd      handshake with rackboot.nbd, attach it to /dev/nbdN, mount it
//	disk     wipe and rebuild the build disk, mount it at /build
//	identity /etc/hostname, /etc/machine-id, /etc/rackboot/boot.json
//	switch_root into the root's /sbin/init
//
// Any failure is reported and printed, and the board reboots after
// rackboot.fail_delay. In identify mode (rackboot.mode=identify) the init
// brings up the network, reports the machine and powers off.
package initramfs

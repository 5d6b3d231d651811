// Command benche2e times a whole network boot of one QEMU x86 board, from
// power-on to its root mounted from NBD, booted by rackboot and by a
// stand-in stack a lab would build from Debian packages, and prints the
// ratio (target: rackboot at most 1.0x the stand-in). It is `make
// bench-e2e`, through scripts/bench-e2e.sh:
//
//	go run ./scripts/benche2e [-n 3] [-pxelinux=true] [-out FILE] [-keep] [-v]
//
// It needs root, QEMU, dnsmasq, nbd-server, nbd-client and the artifacts
// of `make rack`.
//
// # The board
//
// The board is the virtual rack's (package e2e), the same both ways:
// qemu-system-x86_64 -M pc,graphics=off under TCG (or KVM where a
// functional probe shows it works), -cpu max, 1 GiB, one CPU, virtio-net
// on a tap bridged in a network namespace, Debian's iPXE ROM, -boot n, a
// virtio build disk, the serial console on a socket. It boots the same
// kernel (out/boot/amd64/vmlinuz) and mounts the same master image
// (out/images/minimal-amd64/root.img) over NBD both ways.
//
// # The two paths
//
// rackboot: rackboot serve in its own namespace, as the e2e tests run it
// (DHCP full mode, the board's reservation): iPXE gets the iPXE script over
// HTTP, then the kernel and rackboot's initramfs over HTTP; the initramfs
// attaches the root over NBD (a fresh copy-on-write layer), rebuilds the
// build disk and switch_roots. With -pxelinux a second board of the same
// rack takes loader: pxelinux (PXELINUX, its config and the files over
// TFTP) as a second row.
//
// Stand-in: in another namespace with the same addresses, dnsmasq answers
// DHCP (a dhcp-host reservation, the router, boot file pxelinux.0) and
// serves TFTP; the ROM loads PXELINUX, which reads pxelinux.cfg/default
// (the same console and BOOTIF as rackboot's command line, plus Debian's
// nbdroot=) and loads the kernel and a busybox initramfs. A fresh
// nbd-server (copyonwrite = true, max_threads = -nbd-threads; Debian's
// 3.24 corrupts overlapping copy-on-write writes with more than one
// thread) serves the image for each boot, as a lab starts one per job. The
// initramfs (built here, reproducibly: static busybox from the kernel
// build's cache, Debian's nbd-client with its libraries, the modules from
// the pinned kernel package) loads its modules, runs udhcpc and
// nbd-client, mounts /dev/nbd0 and prints a marker line before
// switch_root. It ignores the build disk.
//
// # Measurement
//
// Each boot is a fresh QEMU, one board at a time, the paths alternating,
// -n boots each. The time is from QEMU's start (host clock) to the console
// line that says the root is mounted and control passes to it:
// rackboot's "switch_root to" line, the stand-in's marker. Console lines
// are timestamped as they reach the host; the serial port is not paced, so
// that is when the guest printed them. The same lines split the boot into
// phases: firmware (to iPXE's DHCP), DHCP (iPXE's "Configuring ... ok",
// which includes its IPv6 and proxyDHCP waits), loader and config, kernel
// and initrd transfer, kernel to /init, /init to the root mounted (the
// kernel's "EXT4-fs (nbd0): mounted") and from there to switch_root
// (rackboot rebuilds the build disk here).
//
// Other QEMU guests on the machine compete for its CPUs: each row shows
// the load average and how many there were.
//
// # Cleanup
//
// Everything lives in /var/tmp/benche2e-PID-*: the racks' files, the
// stand-in's TFTP root and logs. The namespaces, QEMU, rackboot, dnsmasq
// and nbd-server are stopped and removed at the end, after a failure or
// SIGINT too; what a killed run left behind is removed by the next run.
package main

import "github.com/rackboot/rackboot/scripts/internal/benchkit"

func main() { benchkit.Main("benche2e", "interrupted; cleaned up", run) }

package main

import (
	"cmp"
	"context"
	"fmt"
	"log"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/rackboot/rackboot/initramfs/boot"
	"github.com/rackboot/rackboot/initramfs/cmdline"
	"github.com/rackboot/rackboot/initramfs/early"
	"github.com/rackboot/rackboot/initramfs/identity"
	"github.com/rackboot/rackboot/initramfs/kmod"
	"github.com/rackboot/rackboot/initramfs/machine"
	"github.com/rackboot/rackboot/initramfs/nbdroot"
	"github.com/rackboot/rackboot/initramfs/netup"
	"github.com/u-root/u-root/pkg/mount"
	"golang.org/x/sys/unix"
)

// shell is the debug shell, packed when the build has busybox.
const shell = "/bin/sh"

// run wires the real system into the boot sequence. It never returns: PID
// 1 must not exit.
func run() {
	console := os.Stdout
	// u-root's packages log with the standard logger (dhclient, switch_root).
	log.SetFlags(0)
	log.SetPrefix("rackboot: ")
	// The kernel starts init without PATH; disk.Build runs mke2fs.
	os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	sys := boot.System{
		Early:       func() error { return early.Create(early.Rootfs()) },
		Cmdline:     func() (string, error) { b, err := os.ReadFile("/proc/cmdline"); return string(b), err },
		LoadModules: loadModules,
		Network: func(ctx context.Context, c cmdline.Config, printf func(string, ...any)) (netup.Lease, error) {
			return netup.Up(ctx, netup.Options{MAC: c.BootIF, Printf: printf})
		},
		AttachRoot:    nbdroot.Attach,
		Disk:          buildDisk{},
		Mount:         func(dev, target string) error { return mountExt4(dev, target) },
		WriteIdentity: identity.Write,
		Describe:      func() machine.Facts { return machine.Describe(os.DirFS("/")) },
		SwitchRoot:    mount.SwitchRoot,
		Reboot:        func() error { return halt(unix.LINUX_REBOOT_CMD_RESTART) },
		PowerOff:      func() error { return halt(unix.LINUX_REBOOT_CMD_POWER_OFF) },
		Shell:         runShell,
		Sleep: func(ctx context.Context, d time.Duration) {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		},
		Uptime:  uptime,
		Console: console,
	}
	err := boot.Run(context.Background(), sys)
	fmt.Fprintf(console, "rackboot: cannot reboot: %v\n", err)
	for {
		time.Sleep(time.Hour)
	}
}

func loadModules(extra, required []string) error {
	rel, err := kmod.Release()
	if err != nil {
		return err
	}
	names, err := kmod.Packed("/", rel)
	if err != nil {
		return err
	}
	res, err := kmod.Load(append(names, extra...), required)
	for n, e := range res.Failed {
		fmt.Fprintf(os.Stdout, "rackboot: module %s not loaded: %v\n", n, e)
	}
	slow := slices.SortedFunc(maps.Keys(res.Took), func(a, b string) int { return cmp.Compare(res.Took[b], res.Took[a]) })
	var parts []string
	for _, n := range slow[:min(5, len(slow))] {
		parts = append(parts, fmt.Sprintf("%s %s", n, res.Took[n].Round(time.Millisecond)))
	}
	fmt.Fprintf(os.Stdout, "rackboot: %d modules loaded; slowest: %s\n", len(res.Loaded), strings.Join(parts, ", "))
	return err
}

func mountExt4(dev, target string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	return unix.Mount(dev, target, "ext4", 0, "")
}

func halt(cmd int) error {
	unix.Sync()
	return unix.Reboot(cmd)
}

func runShell() error {
	if _, err := os.Stat(shell); err != nil {
		return fmt.Errorf("no shell in this initramfs: %w", err)
	}
	c := exec.Command(shell)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	return c.Run()
}

// uptime is CLOCK_BOOTTIME: the time since the kernel started, as in its
// log's timestamps.
func uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

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

// moduleParams are the parameters the init loads modules with: nbd makes
// only /dev/nbd0 (the root's; the driver adds devices on demand when a
// netlink connect names another) instead of 16 with their sysfs and
// uevents, which costs ~0.1 s under emulation.
var moduleParams = map[string]string{"nbd": "nbds_max=1"}

// loadModules loads the modules the hardware needs (matched by modalias),
// the required ones and extra; an initramfs without modules.alias loads
// every packed module.
func loadModules(extra, required []string) error {
	rel, err := kmod.Release()
	if err != nil {
		return err
	}
	packed, err := kmod.Packed("/", rel)
	if err != nil {
		return err
	}
	var res kmod.Result
	how := "every packed module"
	if aliases, aerr := kmod.ReadAliases("/", rel); aerr == nil {
		res, err = kmod.LoadHardware(aliases, packed, "/sys", kmod.HardwareOptions{
			Always: append(slices.Clone(required), extra...), Required: required, Params: moduleParams,
		})
		how = "matched to the hardware"
	} else {
		res, err = kmod.Load(append(packed, extra...), required)
	}
	for n, e := range res.Failed {
		fmt.Fprintf(os.Stdout, "rackboot: module %s not loaded: %v\n", n, e)
	}
	slow := slices.SortedFunc(maps.Keys(res.Took), func(a, b string) int { return cmp.Compare(res.Took[b], res.Took[a]) })
	var parts []string
	for _, n := range slow[:min(5, len(slow))] {
		parts = append(parts, fmt.Sprintf("%s %s", n, res.Took[n].Round(time.Millisecond)))
	}
	fmt.Fprintf(os.Stdout, "rackboot: %d modules loaded of %d packed, %s: %s; slowest: %s\n",
		len(res.Loaded), len(packed), how, strings.Join(res.Loaded, " "), strings.Join(parts, ", "))
	return err
}

// rescanModules loads the modules that devices which appeared since the
// modules step need, if the initramfs matches modules to the hardware.
func rescanModules() {
	rel, err := kmod.Release()
	if err != nil {
		return
	}
	aliases, err := kmod.ReadAliases("/", rel)
	if err != nil {
		return
	}
	packed, err := kmod.Packed("/", rel)
	if err != nil {
		return
	}
	res, _ := kmod.LoadHardware(aliases, packed, "/sys", kmod.HardwareOptions{Params: moduleParams})
	if len(res.Loaded) > 0 {
		fmt.Fprintf(os.Stdout, "rackboot: modules for new devices: %s\n", strings.Join(res.Loaded, " "))
	}
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

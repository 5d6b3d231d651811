// Package boot is the initramfs's boot sequence: the order of the steps,
// what is reported, and what happens on failure. It does nothing to the
// machine itself: the init wires a [System] of real operations, and tests
// wire fakes.
//
// # Failure
//
// A failed step is reported and printed with its cause; the board then
// waits rackboot.fail_delay and reboots (or, with rackboot.debug=shell,
// starts a shell on the console and reboots when it exits). Failures
// before the network is up (a missing required module, a command line
// without board or export) are held until DHCP has run, when reporting is
// possible, so the appliance hears about them too.
package boot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"

	"github.com/rackboot/rackboot/initramfs/cmdline"
	"github.com/rackboot/rackboot/initramfs/identity"
	"github.com/rackboot/rackboot/initramfs/machine"
	"github.com/rackboot/rackboot/initramfs/nbdroot"
	"github.com/rackboot/rackboot/initramfs/netup"
	"github.com/rackboot/rackboot/initramfs/report"
)

// Paths and bounds of the sequence.
const (
	// NewRoot is where the root is mounted before switch_root.
	NewRoot = "/newroot"
	// BuildMount is the build disk's mount point inside the root.
	BuildMount = "/build"
	// FlushTimeout bounds the wait for queued reports before switch_root,
	// reboot or power-off.
	FlushTimeout = 3 * time.Second
)

// Step names, as reported.
const (
	StepMount      = "mount"
	StepCmdline    = "cmdline"
	StepModules    = "modules"
	StepNetwork    = "network"
	StepIdentify   = "identify"
	StepNBD        = "nbd"
	StepDisk       = "disk"
	StepIdentity   = "identity"
	StepSwitchRoot = "switch_root"
)

// ErrNoDisk is returned by a BuildDisk when no disk matches the selector.
var ErrNoDisk = errors.New("no build disk")

// BuildDisk prepares the build disk.
type BuildDisk interface {
	// Build finds the disk selector names, ignoring the block devices in
	// exclude (names such as "nbd0"), wipes it, writes a GPT with one ext4
	// partition labelled rackboot-build, and returns the partition's
	// device path. It wraps ErrNoDisk when nothing matches.
	Build(ctx context.Context, selector string, exclude []string) (device string, err error)
}

// System is what the sequence does to the machine. Every field is required.
type System struct {
	Early       func() error
	Cmdline     func() (string, error)
	LoadModules func(extra, required []string) error
	Network     func(ctx context.Context, c cmdline.Config, printf func(string, ...any)) (netup.Lease, error)
	AttachRoot  func(ctx context.Context, o nbdroot.Options) (nbdroot.Root, error)
	Disk        BuildDisk
	// Mount mounts an ext4 device.
	Mount         func(device, target string) error
	WriteIdentity func(root string, id identity.Identity) error
	Describe      func() machine.Facts
	// SwitchRoot returns only on failure.
	SwitchRoot func(root, init string) error
	Reboot     func() error
	PowerOff   func() error
	// Shell runs an interactive shell on the console until it exits.
	Shell  func() error
	Sleep  func(ctx context.Context, d time.Duration)
	Uptime func() time.Duration
	// Console receives the step lines.
	Console io.Writer
}

// requiredModules must load for a root over NBD.
var requiredModules = []string{"nbd", "ext4"}

// bootModules load too in boot mode, best effort: crc32c (an alias, for
// whichever implementations are packed), which ext4 needs to mount a
// metadata_csum filesystem and would otherwise request through modprobe,
// which the initramfs lacks.
var bootModules = []string{"crc32c"}

// Run runs the sequence. It returns only if rebooting or powering off
// fails, or, in tests, when the fakes return.
func Run(ctx context.Context, sys System) error {
	rep := &report.Reporter{Console: sys.Console, Uptime: sys.Uptime}
	b := &booter{sys: sys, rep: rep, cfg: cmdline.Config{FailDelay: cmdline.DefaultFailDelay}}
	return b.run(ctx)
}

type booter struct {
	sys   System
	rep   *report.Reporter
	cfg   cmdline.Config
	start time.Duration // uptime when the init started
	// diskTime is the build disk step's duration, reported apart.
	diskTime time.Duration
}

// failure is a step that failed.
type failure struct {
	step string
	err  error
}

func (b *booter) run(ctx context.Context) error {
	b.start = b.sys.Uptime()
	b.rep.Printf("init started")
	if err := b.rep.Run(ctx, StepMount, func(context.Context) error { return b.sys.Early() }); err != nil {
		return b.fail(ctx, failure{StepMount, err})
	}

	var held []failure // failures to report once the network is up
	err := b.rep.Run(ctx, StepCmdline, func(context.Context) error {
		line, err := b.sys.Cmdline()
		if err != nil {
			return err
		}
		b.cfg, err = cmdline.Parse(line)
		return err
	})
	for _, u := range b.cfg.Unknown {
		b.rep.Printf("warning: unknown parameter %s ignored", u)
	}
	b.rep.URL, b.rep.Token = b.cfg.ReportURL(), b.cfg.Token
	if err != nil {
		if b.rep.URL == "" || b.rep.Token == "" {
			return b.fail(ctx, failure{StepCmdline, err})
		}
		held = append(held, failure{StepCmdline, err})
	}

	var required []string
	extra := b.cfg.Modules
	if b.cfg.Mode == cmdline.ModeBoot {
		required = requiredModules
		extra = append(slices.Clone(bootModules), extra...)
	}
	// Modules load while the network comes up: the network step waits for
	// its interface to appear (LoadModules loads the hardware's drivers
	// first), DHCP's round trips hide the filesystem modules' load time,
	// and nothing after the network runs before the modules are in.
	modules := make(chan error, 1)
	go func() {
		modules <- b.rep.Run(ctx, StepModules, func(context.Context) error { return b.sys.LoadModules(extra, required) })
	}()

	var lease netup.Lease
	netErr := b.rep.Run(ctx, StepNetwork, func(ctx context.Context) error {
		var err error
		lease, err = b.sys.Network(ctx, b.cfg, b.rep.Printf)
		return err
	})
	if err := <-modules; err != nil {
		held = append(held, failure{StepModules, err})
	}
	if netErr != nil {
		return b.fail(ctx, append(held, failure{StepNetwork, netErr})...)
	}
	b.rep.Online()
	b.rep.Printf("network: %s %s on %s, DHCP server %s", lease.Interface, lease.Addr, lease.MAC, lease.Server)
	if len(held) > 0 {
		return b.fail(ctx, held...)
	}

	if b.cfg.Mode == cmdline.ModeIdentify {
		return b.identify(ctx)
	}

	var root nbdroot.Root
	if err := b.rep.Run(ctx, StepNBD, func(ctx context.Context) error {
		var err error
		root, err = b.sys.AttachRoot(ctx, nbdroot.Options{Addr: b.cfg.NBDAddr, Export: b.cfg.NBDExport, Target: NewRoot})
		return err
	}); err != nil {
		return b.fail(ctx, failure{StepNBD, err})
	}
	b.rep.Printf("root: %s (%d bytes, flags %#x) on %s", root.Device, root.Details.Size, root.Details.Flags, NewRoot)

	var buildDev string
	diskStart := time.Now()
	err = b.rep.Run(ctx, StepDisk, func(ctx context.Context) error {
		if b.cfg.Disk == "" {
			b.rep.Printf("no build disk (rackboot.disk not set or none)")
			return nil
		}
		dev, err := b.sys.Disk.Build(ctx, b.cfg.Disk, []string{filepath.Base(root.Device)})
		if errors.Is(err, ErrNoDisk) && b.cfg.DiskOptional {
			b.rep.Printf("no build disk matches %q; continuing without (rackboot.disk_optional=1): %v", b.cfg.Disk, err)
			return nil
		}
		if err != nil {
			return err
		}
		buildDev = dev
		if err := b.sys.Mount(dev, filepath.Join(NewRoot, BuildMount)); err != nil {
			return fmt.Errorf("mounting build disk %s: %w", dev, err)
		}
		b.rep.Printf("build disk: %s on %s", dev, BuildMount)
		return nil
	})
	b.diskTime = time.Since(diskStart)
	if err != nil {
		return b.fail(ctx, failure{StepDisk, err})
	}

	if err := b.rep.Run(ctx, StepIdentity, func(context.Context) error {
		return b.sys.WriteIdentity(NewRoot, identity.Identity{
			Board: b.cfg.Board, MAC: lease.MAC.String(), IP: lease.Addr.Addr().String(), Token: b.cfg.Token,
			NBD: "nbd://" + b.cfg.NBDAddr + "/" + b.cfg.NBDExport, NBDAddr: b.cfg.NBDAddr, Export: b.cfg.NBDExport,
			Device: root.Device, NBDIndex: root.Index, Size: root.Details.Size,
			Appliance: b.cfg.HTTP, BuildDisk: buildDev,
		})
	}); err != nil {
		return b.fail(ctx, failure{StepIdentity, err})
	}

	total := b.sys.Uptime() - b.start
	b.rep.Record(StepSwitchRoot, 0, nil)
	b.rep.Printf("switch_root to %s: init took %s, %s without the build disk",
		b.cfg.Init, total.Round(time.Millisecond), (total - b.diskTime).Round(time.Millisecond))
	b.flush(ctx)
	err = b.sys.SwitchRoot(NewRoot, b.cfg.Init)
	b.rep.Record(StepSwitchRoot, 0, err)
	return b.fail(ctx, failure{StepSwitchRoot, err})
}

// identify reports the machine and powers off.
func (b *booter) identify(ctx context.Context) error {
	start := time.Now()
	facts := b.sys.Describe()
	j, err := json.Marshal(facts)
	if err != nil {
		return b.fail(ctx, failure{StepIdentify, err})
	}
	b.rep.Printf("identify: %s", j)
	b.rep.RecordDetail(StepIdentify, time.Since(start), j)
	b.flush(ctx)
	b.rep.Printf("powering off")
	return b.sys.PowerOff()
}

func (b *booter) flush(ctx context.Context) {
	fctx, cancel := context.WithTimeout(ctx, FlushTimeout)
	defer cancel()
	b.rep.Flush(fctx)
}

// fail prints the failures (their steps are already recorded), waits and
// reboots, or runs a shell if asked.
func (b *booter) fail(ctx context.Context, fs ...failure) error {
	for _, f := range fs {
		b.rep.Printf("BOOT FAILED at step %s: %v", f.step, f.err)
	}
	b.rep.Retry() // if reporting stopped, the failure gets another chance
	b.flush(ctx)
	if b.cfg.Shell {
		b.rep.Printf("rackboot.debug=shell: starting a shell; exit it to reboot")
		if err := b.sys.Shell(); err != nil {
			b.rep.Printf("shell: %v", err)
		}
	} else {
		b.rep.Printf("rebooting in %s (rackboot.fail_delay)", b.cfg.FailDelay)
		b.sys.Sleep(ctx, b.cfg.FailDelay)
	}
	return b.sys.Reboot()
}

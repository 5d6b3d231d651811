// Package early sets up the initramfs's own root before anything else
// runs: the kernel's pseudo-filesystems, as a declarative list of
// [Creator]s in the manner of u-root's libinit, but without cgroup v1
// mounts (systemd in the booted root mounts its own cgroup2 hierarchy and
// objects to a v1 one left behind).
package early

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Creator is one setup action.
type Creator interface {
	Create() error
	// String reads like the shell command that does the same.
	String() string
}

// Mount mounts a filesystem, creating the mount point first. Mounting over
// an existing mount of the same point fails with EBUSY, which Create
// treats as done: a second run is harmless.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// Create mounts m.
func (m Mount) Create() error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("%s: %w", m, err)
	}
	if err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%s: %w", m, err)
	}
	return nil
}

func (m Mount) String() string {
	opts := []string{}
	for _, f := range []struct {
		bit  uintptr
		name string
	}{{unix.MS_NOSUID, "nosuid"}, {unix.MS_NODEV, "nodev"}, {unix.MS_NOEXEC, "noexec"}, {unix.MS_RDONLY, "ro"}} {
		if m.Flags&f.bit != 0 {
			opts = append(opts, f.name)
		}
	}
	if m.Data != "" {
		opts = append(opts, m.Data)
	}
	s := "mount -t " + m.FSType
	if len(opts) > 0 {
		s += " -o " + strings.Join(opts, ",")
	}
	return s + " " + m.Source + " " + m.Target
}

// Dir creates a directory.
type Dir struct {
	Path string
	Mode os.FileMode
}

// Create creates d.
func (d Dir) Create() error { return os.MkdirAll(d.Path, d.Mode) }

func (d Dir) String() string { return fmt.Sprintf("mkdir -p -m %o %s", d.Mode, d.Path) }

// Symlink creates a symbolic link unless something exists at NewName.
type Symlink struct{ Target, NewName string }

// Create creates s.
func (s Symlink) Create() error {
	if _, err := os.Lstat(s.NewName); err == nil {
		return nil
	}
	return os.Symlink(s.Target, s.NewName)
}

func (s Symlink) String() string { return "ln -s " + s.Target + " " + s.NewName }

// Rootfs is what the init needs before it parses its command line: /proc,
// /sys, /dev (devtmpfs, so device nodes appear as drivers bind) and /run.
// switch_root moves these four into the new root.
func Rootfs() []Creator {
	const nsd = unix.MS_NOSUID | unix.MS_NODEV
	return []Creator{
		Mount{Source: "proc", Target: "/proc", FSType: "proc", Flags: nsd | unix.MS_NOEXEC},
		Mount{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: nsd | unix.MS_NOEXEC},
		Mount{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
		Mount{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: nsd, Data: "mode=0755"},
		Symlink{Target: "/proc/self/fd", NewName: "/dev/fd"},
		Dir{Path: "/tmp", Mode: 0o1777},
	}
}

// Create runs cs in order and stops at the first error.
func Create(cs []Creator) error {
	for _, c := range cs {
		if err := c.Create(); err != nil {
			return err
		}
	}
	return nil
}

package agent

import (
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/rackboot/rackboot/initramfs/identity"
	"github.com/rackboot/rackboot/initramfs/machine"
	"golang.org/x/sys/unix"
)

// Facts is the heartbeat's detail: who the board is, what it has and how
// its root is doing. Its JSON stays well under the appliance's 16 KiB
// limit for a detail.
type Facts struct {
	Board string `json:"board"`
	MAC   string `json:"mac"`
	IP    string `json:"ip,omitempty"`
	// Image is the image the root's export is a session of, when the
	// export name says (IMAGE@SESSION); Export is the export name with the
	// boot token replaced by "TOKEN" (the appliance never shows tokens).
	Image  string `json:"image,omitempty"`
	Export string `json:"export"`
	// Machine is what identify mode reports too: arch, CPUs, memory,
	// model, disks (size and model), NICs.
	Machine machine.Facts `json:"machine"`
	// Kernel is the running kernel's release (uname -r).
	Kernel string `json:"kernel"`
	// Uptime is the time since the kernel started, in nanoseconds.
	Uptime time.Duration `json:"uptime_ns"`
	// BuildDisk is the device mounted at /build, empty if none.
	BuildDisk string `json:"build_disk,omitempty"`
	Root      Status `json:"root"`
	Agent     string `json:"agent"`
}

// describe gathers the facts from procfs and sysfs under root (the real
// one is os.DirFS("/")); it never reads the root filesystem itself.
func describe(sys fs.FS, id identity.Identity, root Status) Facts {
	f := Facts{
		Board: id.Board, MAC: id.MAC, IP: id.IP, BuildDisk: id.BuildDisk,
		Export: redact(id.Export, id.Token), Image: image(id.Export, id.Token),
		Machine: machine.Describe(sys), Kernel: release(), Uptime: uptime(),
		Root: root,
	}
	return f
}

// image is IMAGE of an IMAGE@SESSION export name, unless it is the token.
func image(export, token string) string {
	img, _, ok := strings.Cut(export, "@")
	if !ok || img == "" || (token != "" && strings.Contains(img, token)) {
		return ""
	}
	return img
}

func redact(s, token string) string {
	if token == "" {
		return s
	}
	return strings.ReplaceAll(s, token, "TOKEN")
}

func release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// uptime is CLOCK_BOOTTIME: the time since the kernel started.
func uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// mounted reports whether target is a mount point, from
// /proc/self/mountinfo (mount points with spaces, escaped there as \040,
// are not supported).
func mounted(target string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == target {
			return true
		}
	}
	return false
}

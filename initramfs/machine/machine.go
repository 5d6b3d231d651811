// Package machine describes the hardware the initramfs runs on, for
// identify mode: CPUs, memory, disks and network interfaces, read from
// procfs and sysfs.
package machine

import (
	"bufio"
	"bytes"
	"io/fs"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// Facts is what identify mode reports.
type Facts struct {
	Arch     string `json:"arch"`
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpu_model,omitempty"`
	// MemoryBytes is MemTotal.
	MemoryBytes int64  `json:"memory_bytes"`
	Model       string `json:"model,omitempty"` // DMI product or device tree model
	Disks       []Disk `json:"disks"`
	NICs        []NIC  `json:"nics"`
}

// Disk is a block device that isn't virtual (loop, ram, nbd...).
type Disk struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
	Model string `json:"model,omitempty"`
}

// NIC is a network interface with a MAC.
type NIC struct {
	Name string `json:"name"`
	MAC  string `json:"mac"`
}

// Describe reads the facts from a filesystem holding proc/ and sys/ (the
// real one is os.DirFS("/")).
func Describe(root fs.FS) Facts {
	f := Facts{Arch: runtime.GOARCH, Disks: []Disk{}, NICs: []NIC{}}
	if b, err := fs.ReadFile(root, "proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			switch k {
			case "processor":
				f.CPUs++
			case "model name", "Hardware", "cpu model":
				if f.CPUModel == "" {
					f.CPUModel = v
				}
			}
		}
	}
	if b, err := fs.ReadFile(root, "proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				f.MemoryBytes = kb * 1024
			}
		}
	}
	for _, p := range []string{"sys/class/dmi/id/product_name", "sys/firmware/devicetree/base/model"} {
		if s := readString(root, p); s != "" {
			f.Model = s
			break
		}
	}
	if ents, err := fs.ReadDir(root, "sys/block"); err == nil {
		for _, e := range ents {
			n := e.Name()
			if virtual(n) {
				continue
			}
			sectors, _ := strconv.ParseInt(readString(root, path.Join("sys/block", n, "size")), 10, 64)
			f.Disks = append(f.Disks, Disk{Name: n, Bytes: sectors * 512, Model: readString(root, path.Join("sys/block", n, "device/model"))})
		}
	}
	if ents, err := fs.ReadDir(root, "sys/class/net"); err == nil {
		for _, e := range ents {
			mac := readString(root, path.Join("sys/class/net", e.Name(), "address"))
			if e.Name() == "lo" || mac == "" || mac == "00:00:00:00:00:00" {
				continue
			}
			f.NICs = append(f.NICs, NIC{Name: e.Name(), MAC: mac})
		}
	}
	slices.SortFunc(f.Disks, func(a, b Disk) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(f.NICs, func(a, b NIC) int { return strings.Compare(a.Name, b.Name) })
	return f
}

func virtual(name string) bool {
	for _, p := range []string{"loop", "ram", "nbd", "zram", "dm-", "md", "sr"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func readString(root fs.FS, p string) string {
	b, err := fs.ReadFile(root, p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(strings.TrimRight(string(b), "\x00"))
}

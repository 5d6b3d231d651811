package disk

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultSelector is what an empty selector means.
const DefaultSelector = "largest"

var (
	// ErrNone is returned by Select for the selector "none": the board
	// has no build disk, and the caller should go on without one.
	ErrNone = errors.New("build disk selector is none")
	// ErrNoMatch is wrapped by Select's errors when no usable disk
	// matches the selector; the message lists every disk considered and
	// why it was passed over.
	ErrNoMatch = errors.New("no usable disk")
	// ErrUnwipeable is wrapped by Select's errors when the disk the
	// selector names, or with "largest" every candidate, is there but
	// read-only or held by device-mapper or md: it may keep an earlier
	// build's data, so the board must not boot as if it had no disk.
	ErrUnwipeable = errors.New("the build disk can't be wiped")
)

// Select picks the build disk from disks (as List returns them) by
// selector:
//
//   - "largest" (or ""): the largest disk that is not removable, not
//     read-only, not empty, not held by device-mapper or md, and not
//     excluded; ties go to the first by name.
//   - "by-id:NAME" or "by-path:NAME": the disk with that /dev/disk/by-id or
//     by-path name (a full /dev/disk/... path is accepted too). Removable
//     disks can be chosen this way.
//   - "serial:SERIAL": the disk with that serial number.
//   - "none": no disk; Select returns ErrNone.
//
// Whatever the selector, Select never returns a disk that is excluded,
// read-only, held, empty, or of a kind List leaves out (loop, ram, zram,
// nbd, eMMC boot areas...). Each exclude is a disk or partition name or
// device path ("nbd0", "/dev/vda", "mmcblk0p2"); a partition excludes its
// whole disk. Exclude the root device and the disks Mounted returns.
func Select(disks []Disk, selector string, exclude ...string) (Disk, error) {
	kind, value, _ := strings.Cut(selector, ":")
	var match func(Disk) bool
	switch kind {
	case "", "largest":
		if value != "" {
			break
		}
		return largest(disks, exclude)
	case "none":
		if value == "" {
			return Disk{}, ErrNone
		}
	case "by-id":
		value = strings.TrimPrefix(value, "/dev/disk/by-id/")
		match = func(d Disk) bool { return slices.Contains(d.IDs, value) }
	case "by-path":
		value = strings.TrimPrefix(value, "/dev/disk/by-path/")
		match = func(d Disk) bool { return slices.Contains(d.PathIDs, value) }
	case "serial":
		match = func(d Disk) bool { return d.Serial != "" && d.Serial == value }
	}
	if match == nil || value == "" {
		return Disk{}, fmt.Errorf("build disk selector %q: want largest, by-id:NAME, by-path:NAME, serial:SERIAL or none", selector)
	}
	var found []Disk
	for _, d := range disks {
		if match(d) {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 0:
		return Disk{}, fmt.Errorf("%w for %s: considered %s", ErrNoMatch, selector, listing(disks, kind))
	case 1:
		if why := unusable(found[0], exclude); why != "" {
			err := ErrNoMatch
			if unwipeable(found[0]) {
				err = ErrUnwipeable
			}
			return Disk{}, fmt.Errorf("%w for %s: %s is %s", err, selector, found[0].Name, why)
		}
		return found[0], nil
	}
	var names []string
	for _, d := range found {
		names = append(names, d.Name)
	}
	return Disk{}, fmt.Errorf("%w for %s: it matches %d disks (%s)", ErrNoMatch, selector, len(found), strings.Join(names, ", "))
}

func largest(disks []Disk, exclude []string) (Disk, error) {
	var best Disk
	var skipped []string
	stuck := false // a candidate is there but can't be wiped
	for _, d := range disks {
		why := unusable(d, exclude)
		if why == "" && d.Removable {
			why = "removable"
		}
		if why != "" {
			skipped = append(skipped, fmt.Sprintf("%s (%s): %s", d.Name, gib(d.Size), why))
			stuck = stuck || (!d.Removable && neverBuildDisk(d.Name) == "" && excluded(d, exclude) == "" && unwipeable(d))
			continue
		}
		if d.Size > best.Size {
			best = d
		}
	}
	if best.Name == "" {
		if len(skipped) == 0 {
			skipped = []string{"no disks"}
		}
		err := ErrNoMatch
		if stuck {
			err = ErrUnwipeable
		}
		return Disk{}, fmt.Errorf("%w for largest: considered %s", err, strings.Join(skipped, "; "))
	}
	return best, nil
}

// unwipeable reports a disk that holds data but that Wipe can't reach:
// read-only (a build can write-protect some disks) or held by dm or md.
func unwipeable(d Disk) bool {
	return d.Size > 0 && (d.ReadOnly || len(d.Holders) > 0)
}

// unusable says why d can't be the build disk whatever the selector, or
// returns "".
func unusable(d Disk, exclude []string) string {
	switch {
	case neverBuildDisk(d.Name) != "":
		return neverBuildDisk(d.Name)
	case excluded(d, exclude) != "":
		return "excluded (" + excluded(d, exclude) + ")"
	case d.ReadOnly:
		return "read-only"
	case d.Size <= 0:
		return "empty"
	case len(d.Holders) > 0:
		return "in use by " + strings.Join(d.Holders, ", ")
	}
	return ""
}

// excluded returns the exclude entry that names d or one of its
// partitions, or "".
func excluded(d Disk, exclude []string) string {
	for _, e := range exclude {
		if e == "" {
			continue
		}
		base := filepath.Base(e)
		if base == d.Name || (d.Path != "" && filepath.Clean(e) == d.Path) || isPartitionOf(base, d.Name) {
			return e
		}
	}
	return ""
}

// isPartitionOf reports whether part names a partition of the disk called
// disk: disk followed by digits, or by "p" and digits when disk ends in a
// digit.
func isPartitionOf(part, disk string) bool {
	rest, ok := strings.CutPrefix(part, disk)
	if !ok || rest == "" {
		return false
	}
	if last := disk[len(disk)-1]; last >= '0' && last <= '9' {
		if rest, ok = strings.CutPrefix(rest, "p"); !ok || rest == "" {
			return false
		}
	}
	return strings.Trim(rest, "0123456789") == ""
}

// listing describes the disks for an error message, with the names the
// selector kind looks at.
func listing(disks []Disk, kind string) string {
	if len(disks) == 0 {
		return "no disks"
	}
	var parts []string
	for _, d := range disks {
		var names string
		switch kind {
		case "by-id":
			names = "by-id " + orNone(strings.Join(d.IDs, ", "))
		case "by-path":
			names = "by-path " + orNone(strings.Join(d.PathIDs, ", "))
		default:
			names = "serial " + orNone(d.Serial)
		}
		parts = append(parts, fmt.Sprintf("%s (%s, %s)", d.Name, gib(d.Size), names))
	}
	return strings.Join(parts, "; ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// gib formats a size in bytes for messages.
func gib(n int64) string {
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/rackboot/rackboot/internal/testenv"
)

// oldDisk is a disk image as a previous boot might leave it: a GPT (made
// by sgdisk) with an ext4 filesystem holding a file full of a marker, an
// LVM physical volume and an mdraid member, plus the marker written raw
// near the start, in the middle and near the end of the disk.
type oldDisk struct {
	path   string
	size   int64
	marker string
	parts  []int64 // byte offsets of partitions 1 (ext4), 2 (LVM), 3 (md)
	// backups are the ext4 backup superblocks (in 4 KiB blocks from the
	// start of partition 1), as dumpe2fs lists them.
	backups []string
}

func makeOldDisk(t *testing.T, size int64) oldDisk {
	t.Helper()
	needTools(t, "sgdisk", "mke2fs", "debugfs", "blkid", "wipefs", "dumpe2fs")
	d := oldDisk{path: sparseImage(t, size), size: size, marker: uniqueMarker(t)}
	tool(t, "sgdisk", "-n", "1:2048:+512M", "-t", "1:8300", "-n", "2:0:+64M", "-t", "2:8e00", "-n", "3:0:+64M", "-t", "3:fd00", d.path)
	first := regexp.MustCompile(`First sector: (\d+)`)
	last := regexp.MustCompile(`Last sector: (\d+)`)
	var sizes []int64
	for i := 1; i <= 3; i++ {
		info := tool(t, "sgdisk", "-i", strconv.Itoa(i), d.path)
		f, _ := strconv.ParseInt(first.FindStringSubmatch(info)[1], 10, 64)
		l, _ := strconv.ParseInt(last.FindStringSubmatch(info)[1], 10, 64)
		d.parts = append(d.parts, f*512)
		sizes = append(sizes, (l-f+1)*512)
	}
	fs := fmt.Sprintf("%s?offset=%d", d.path, d.parts[0])
	// Small groups, for more backup superblocks: 1, 3, 5, 7, 9.
	tool(t, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-g", "8192", "-E", fmt.Sprintf("offset=%d", d.parts[0]), d.path, strconv.FormatInt(sizes[0]/4096, 10))
	content := filepath.Join(t.TempDir(), "marker.txt")
	if err := os.WriteFile(content, []byte(strings.Repeat(d.marker+"\n", 4096)), 0o644); err != nil {
		t.Fatal(err)
	}
	tool(t, "debugfs", "-w", "-R", "write "+content+" marker.txt", fs)
	writeAt(t, d.path, lvmLabel(), d.parts[1]+512)
	writeAt(t, d.path, mdSuperblock12(sizes[2]), d.parts[2]+4096)
	for _, off := range []int64{40 * 512, size / 2, size - 512<<10} {
		writeAt(t, d.path, []byte(d.marker), off)
	}

	// The image must really hold all of this before the wipe, or the test
	// proves nothing.
	for _, m := range backupRE.FindAllStringSubmatch(tool(t, "dumpe2fs", fs), -1) {
		d.backups = append(d.backups, m[1])
	}
	if len(d.backups) != 5 {
		t.Fatalf("dumpe2fs lists backup superblocks %v; want 5", d.backups)
	}
	if got := tool(t, "debugfs", "-R", "cat marker.txt", fs); !strings.Contains(got, d.marker) {
		t.Fatalf("debugfs cat marker.txt: %q", got)
	}
	if n := len(findMarker(t, d.path, d.marker)); n < 5 {
		t.Fatalf("marker found %d times before wiping; want at least 5", n)
	}
	for i, want := range []string{`PTTYPE="gpt"`, `TYPE="ext4"`, `TYPE="LVM2_member"`, `TYPE="linux_raid_member"`} {
		off := int64(0)
		if i > 0 {
			off = d.parts[i-1]
		}
		if got := probe(t, d.path, off); !strings.Contains(got, want) {
			t.Fatalf("before wiping, blkid -p -O %d = %q; want %s", off, got, want)
		}
	}
	return d
}

// assertNoSignatures checks that blkid finds nothing on the disk or at any
// old partition's offset, that wipefs lists nothing, and that no backup
// ext4 superblock can be used.
func (d oldDisk) assertNoSignatures(t *testing.T) {
	t.Helper()
	for _, off := range append([]int64{0}, d.parts...) {
		if got := probe(t, d.path, off); got != "" {
			t.Errorf("after wiping, blkid -p -O %d = %q; want nothing", off, got)
		}
	}
	if got := tool(t, "wipefs", d.path); strings.TrimSpace(got) != "" {
		t.Errorf("after wiping, wipefs lists:\n%s", got)
	}
	fs := fmt.Sprintf("%s?offset=%d", d.path, d.parts[0])
	// dumpe2fs prints a superblock it can read even when it then fails
	// on the missing group descriptors, so look at what it prints.
	for _, sb := range append([]string{""}, d.backups...) {
		args := []string{"-h", fs}
		if sb != "" {
			args = []string{"-h", "-o", "superblock=" + sb, "-o", "blocksize=4096", fs}
		}
		if out, _ := toolErr(t, "dumpe2fs", args...); strings.Contains(out, "Filesystem magic number") {
			t.Errorf("after wiping, dumpe2fs %s reads a superblock:\n%s", strings.Join(args, " "), out)
		}
	}
}

func TestWipe(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		methods methodSet
		want    WipeMethod
	}{
		"punch-hole": {allMethods, PunchHole},
		"overwrite":  {0, Overwrite},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d := makeOldDisk(t, 1<<30)
			var last progressCall
			res, err := wipe(t.Context(), d.path, tt.methods, WipeOptions{Progress: func(m WipeMethod, done, size int64) {
				last = progressCall{m, done, size}
			}})
			if err != nil {
				t.Fatal(err)
			}
			if want := (progressCall{tt.want, d.size, d.size}); last != want {
				t.Errorf("last progress report %+v; want %+v", last, want)
			}
			if res.Method != tt.want || !res.ZeroFilled || !res.SampleZero || res.Size != d.size {
				t.Errorf("Wipe = %+v; want method %s, zero-filled, sampled zero, size %d", res, tt.want, d.size)
			}
			found := strings.Join(res.Found, "; ")
			for _, want := range []string{"gpt (512-byte sectors, header at 512, 3 partitions)",
				"gpt (512-byte sectors, header at 1073741312, 3 partitions)",
				"ext4 at 1048576 (", "LVM2 label at 537920000", "mdraid 1.x at 605032448"} {
				if !strings.Contains(found, want) {
					t.Errorf("Wipe found %q; want it to mention %q", found, want)
				}
			}
			if got := findMarker(t, d.path, d.marker); len(got) > 0 {
				t.Errorf("after Wipe the marker is still at offsets %v", got)
			}
			d.assertNoSignatures(t)
		})
	}
}

type progressCall struct {
	m          WipeMethod
	done, size int64
}

// TestWipeProgress wipes a sparse image of two and a half chunks and
// checks the reports: one per chunk, the last one for the whole disk.
func TestWipeProgress(t *testing.T) {
	t.Parallel()
	const size = 2*wipeChunk + wipeChunk/2
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	var got []progressCall
	res, err := Wipe(t.Context(), p, WipeOptions{Progress: func(m WipeMethod, done, size int64) {
		got = append(got, progressCall{m, done, size})
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []progressCall{{PunchHole, wipeChunk, size}, {PunchHole, 2 * wipeChunk, size}, {PunchHole, size, size}}
	if res.Method != PunchHole || !slices.Equal(got, want) {
		t.Errorf("Wipe reported %+v by %s; want %+v", got, res.Method, want)
	}
}

// TestZeroSignatures runs only the signature zeroing, as happens on its own
// when a device's discard doesn't zero: the data may survive (that's what
// the bulk wipe is for), but nothing blkid, wipefs or e2fsck recognises.
func TestZeroSignatures(t *testing.T) {
	t.Parallel()
	d := makeOldDisk(t, 1<<30)
	od, err := openDisk(d.path)
	if err != nil {
		t.Fatal(err)
	}
	defer od.f.Close()
	old, err := scan(od.f, od.size, 0)
	if err != nil {
		t.Fatal(err)
	}
	n, err := zeroRegions(t.Context(), od.f, old.Regions)
	if err != nil {
		t.Fatal(err)
	}
	// Both ends of the disk and of 3 partitions (8 MiB, less where they
	// touch), the btrfs mirror at 64 MiB in the ext4 partition, and its 5
	// backup superblocks: a few MiB, not the disk.
	if n < 8<<20 || n > 12<<20 {
		t.Errorf("zeroed %d bytes; want 8-12 MiB", n)
	}
	d.assertNoSignatures(t)
	if got := findMarker(t, d.path, d.marker); len(got) == 0 {
		t.Errorf("the marker is gone after zeroing only signatures; this test no longer shows what the bulk wipe does")
	}
}

// attachLoop attaches image to a free loop device with losetup (extra
// arguments such as -P or -b 4096 are passed on) and detaches it when t
// ends. It skips t where no loop device can be had.
func attachLoop(t *testing.T, image string, args ...string) string {
	t.Helper()
	testenv.RequireRoot(t)
	losetup := testenv.LookPath(t, "losetup")
	out, err := exec.Command(losetup, append(append([]string{"-f", "--show"}, args...), image)...).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device: losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// TestWipeLoop runs Wipe on a real block device (a loop device, which
// supports discard by punching holes in its backing file): root only.
func TestWipeLoop(t *testing.T) {
	d := makeOldDisk(t, 1<<30)
	dev := attachLoop(t, d.path)
	res, err := Wipe(t.Context(), dev, WipeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Method != Discard || !res.SampleZero {
		t.Errorf("Wipe(%s) = %+v; want method discard, sampled zero", dev, res)
	}
	if got := findMarker(t, d.path, d.marker); len(got) > 0 {
		t.Errorf("after Wipe(%s) the marker is still at offsets %v", dev, got)
	}
	d.assertNoSignatures(t)

	// While someone holds the disk exclusively (as a mount does), Wipe
	// must refuse.
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Wipe(t.Context(), dev, WipeOptions{}); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("Wipe(%s) while held exclusively: %v; want EBUSY", dev, err)
	}
}

func TestWipeCancelled(t *testing.T) {
	t.Parallel()
	p := sparseImage(t, 64<<20)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Wipe(ctx, p, WipeOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Wipe with a cancelled context: %v; want context.Canceled", err)
	}
	if _, err := Wipe(t.Context(), t.TempDir(), WipeOptions{}); err == nil {
		t.Errorf("Wipe(directory) succeeded; want an error")
	}
}

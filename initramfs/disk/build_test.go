package disk

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// checkFilesystem checks the ext4 filesystem Build made at res.Offset in
// the image (or on res.Partition) with e2fsck, dumpe2fs and blkid.
func checkFilesystem(t *testing.T, target string, res Result, prezeroed bool) {
	t.Helper()
	fs, blkidArgs := target, []string{"-p", target}
	if res.Partition == "" {
		fs = fmt.Sprintf("%s?offset=%d", target, res.Offset)
		blkidArgs = []string{"-p", "-O", strconv.FormatInt(res.Offset, 10), target}
	}
	// e2fsprogs opens "file?offset=N" at that offset (its unix I/O
	// manager's option), so the partition needn't be copied out.
	if out, err := toolErr(t, "e2fsck", "-fn", fs); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", fs, err, out)
	}
	hdr := tool(t, "dumpe2fs", "-h", fs)
	field := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `:\s*(.*)$`).FindStringSubmatch(hdr)
		if m == nil {
			t.Errorf("dumpe2fs -h has no %q:\n%s", name, hdr)
			return ""
		}
		return strings.TrimSpace(m[1])
	}
	gotFeatures := strings.Fields(field("Filesystem features"))
	wantFeatures := strings.Split(Features, ",")
	slices.Sort(gotFeatures)
	slices.Sort(wantFeatures)
	if !slices.Equal(gotFeatures, wantFeatures) {
		t.Errorf("features %v; want %v", gotFeatures, wantFeatures)
	}
	for name, want := range map[string]string{
		"Filesystem volume name": res.Label,
		"Filesystem UUID":        res.UUID,
		"Block size":             "4096",
		"Block count":            strconv.FormatInt(res.Size/4096, 10),
		"Reserved block count":   "0",
		"Inode size":             "256",
	} {
		if got := field(name); got != want {
			t.Errorf("dumpe2fs %s = %q; want %q", name, got, want)
		}
	}
	// mke2fs rounds the inodes up to fill whole inode-table blocks in
	// every group.
	if n, err := strconv.ParseInt(field("Inode count"), 10, 64); err != nil || n < res.Size/DefaultInodeRatio || n > res.Size/DefaultInodeRatio*101/100 {
		t.Errorf("inode count %d, %v; want about %d", n, err, res.Size/DefaultInodeRatio)
	}
	if j := field("Total journal size"); j == "" {
		t.Errorf("no journal")
	}
	// Group 1's inode table is marked zeroed only when the disk was.
	groups := tool(t, "dumpe2fs", fs)
	g1 := regexp.MustCompile(`Group 1: .*`).FindString(groups)
	if got := strings.Contains(g1, "ITABLE_ZEROED"); got != prezeroed {
		t.Errorf("group 1 %q: ITABLE_ZEROED %v; want %v", g1, got, prezeroed)
	}
	out := tool(t, "blkid", blkidArgs...)
	for _, want := range []string{`LABEL="` + res.Label + `"`, `UUID="` + res.UUID + `"`, `TYPE="ext4"`} {
		if !strings.Contains(out, want) {
			t.Errorf("blkid %s = %q; want %s", strings.Join(blkidArgs, " "), out, want)
		}
	}
}

func TestBuild(t *testing.T) {
	t.Parallel()
	needTools(t, "mke2fs", "e2fsck", "dumpe2fs", "blkid", "sgdisk")
	const size = 8 << 30
	tests := map[string]struct {
		sectorSize int
		wipe       bool
	}{
		"512":         {512, false},
		"512 wiped":   {512, true},
		"4096":        {4096, false},
		"4096 wiped":  {4096, true},
		"default 512": {0, true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := sparseImage(t, size)
			// Leave something for Build to replace.
			tool(t, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "old", p)
			var opts BuildOptions
			opts.SectorSize = tt.sectorSize
			if tt.wipe {
				wr, err := Wipe(t.Context(), p, WipeOptions{})
				if err != nil {
					t.Fatal(err)
				}
				opts.Prezeroed = wr.ZeroFilled
			}
			res, err := Build(t.Context(), p, opts)
			if err != nil {
				t.Fatal(err)
			}
			ss := max(tt.sectorSize, 512)
			if res.Partition != "" || res.Offset != 1<<20 || res.Size != size-2<<20 || res.SectorSize != ss || res.Label != DefaultLabel {
				t.Errorf("Build = %+v; want no partition node, offset 1 MiB, size 8 GiB - 2 MiB, %d-byte sectors", res, ss)
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			first, last, typ, part, pname, err := readGPT(f, ss)
			if err != nil || first*int64(ss) != res.Offset || (last-first+1)*int64(ss) != res.Size ||
				typ != linuxFilesystemType || part.String() != res.PartUUID || pname != DefaultLabel {
				t.Errorf("readGPT = %d, %d, %v, %v, %q, %v; want the partition of %+v", first, last, typ, part, pname, err, res)
			}
			if ss == 512 {
				if out := tool(t, "sgdisk", "-v", p); !strings.Contains(out, "No problems found") {
					t.Errorf("sgdisk -v:\n%s", out)
				}
				info := tool(t, "sgdisk", "-i", "1", p)
				for _, want := range []string{"(Linux filesystem)", "Partition unique GUID: " + strings.ToUpper(res.PartUUID),
					"Partition name: 'rackboot-build'", "First sector: 2048 "} {
					if !strings.Contains(info, want) {
						t.Errorf("sgdisk -i 1 lacks %q:\n%s", want, info)
					}
				}
				if out := tool(t, "blkid", "-p", p); !strings.Contains(out, `PTTYPE="gpt"`) {
					t.Errorf("blkid -p %s = %q; want PTTYPE gpt", p, out)
				}
			}
			checkFilesystem(t, p, res, tt.wipe)
		})
	}
}

func TestBuildErrors(t *testing.T) {
	t.Parallel()
	needTools(t, "mke2fs")
	tests := map[string]struct {
		size int64
		opts BuildOptions
		want string
	}{
		"too small":       {size: 16 << 20, want: "too small"},
		"long label":      {size: 64 << 20, opts: BuildOptions{Label: "seventeen-bytes!!"}, want: "longer than 16 bytes"},
		"no mke2fs":       {size: 64 << 20, opts: BuildOptions{Mke2fs: "/nonexistent/mke2fs"}, want: "finding mke2fs"},
		"bad sector size": {size: 64 << 20, opts: BuildOptions{SectorSize: 520}, want: "sector size 520"},
		"mke2fs fails":    {size: 64 << 20, opts: BuildOptions{InodeRatio: 1}, want: "running "},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := Build(t.Context(), sparseImage(t, tt.size), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build: %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestBuildLoop runs Wipe and Build on real block devices (loop devices
// with partition scanning) with 512-byte and 4096-byte logical sectors:
// root only.
func TestBuildLoop(t *testing.T) {
	needTools(t, "mke2fs", "e2fsck", "dumpe2fs", "blkid", "sgdisk")
	for _, ss := range []string{"512", "4096"} {
		t.Run(ss, func(t *testing.T) {
			p := sparseImage(t, 1<<30)
			dev := attachLoop(t, p, "-P", "-b", ss)
			wr, err := Wipe(t.Context(), dev, WipeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			res, err := Build(t.Context(), dev, BuildOptions{Prezeroed: wr.ZeroFilled})
			if err != nil {
				t.Fatal(err)
			}
			if res.Partition != dev+"p1" || strconv.Itoa(res.SectorSize) != ss || res.Offset != 1<<20 {
				t.Errorf("Build(%s) = %+v; want partition %sp1, %s-byte sectors, offset 1 MiB", dev, res, dev, ss)
			}
			if out := tool(t, "sgdisk", "-v", dev); !strings.Contains(out, "No problems found") {
				t.Errorf("sgdisk -v %s:\n%s", dev, out)
			}
			if out := tool(t, "blkid", "-p", res.Partition); !strings.Contains(out, `PART_ENTRY_UUID="`+res.PartUUID+`"`) {
				t.Errorf("blkid -p %s = %q; want PART_ENTRY_UUID %s", res.Partition, out, res.PartUUID)
			}
			checkFilesystem(t, res.Partition, res, wr.ZeroFilled)
		})
	}
}

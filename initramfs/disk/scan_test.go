package disk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var backupRE = regexp.MustCompile(`Backup superblock at (\d+)`)

// TestSuperblockBackups checks parseSuperblock and backups against
// dumpe2fs on filesystems mke2fs made with every backup layout: sparse
// (4 KiB and 1 KiB blocks, where the first data block is 1), not sparse,
// sparse_super2, and small groups.
func TestSuperblockBackups(t *testing.T) {
	t.Parallel()
	needTools(t, "mke2fs", "dumpe2fs")
	tests := map[string][]string{
		"ext4":          {"-t", "ext4", "-b", "4096"},
		"ext4 1k":       {"-t", "ext4", "-b", "1024"},
		"ext2 1k":       {"-t", "ext2", "-b", "1024"},
		"ext3 small":    {"-t", "ext3", "-b", "4096", "-g", "1024"},
		"not sparse":    {"-t", "ext2", "-b", "4096", "-g", "4096", "-O", "^sparse_super,^resize_inode"},
		"sparse_super2": {"-t", "ext4", "-b", "4096", "-O", "sparse_super2"},
		"ext4 label":    {"-t", "ext4", "-L", "old-label"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const size = 1 << 30
			p := sparseImage(t, size)
			tool(t, "mke2fs", append(append([]string{"-q", "-F"}, args...), p)...)
			out := tool(t, "dumpe2fs", p)
			bs, err := strconv.ParseInt(regexp.MustCompile(`Block size:\s+(\d+)`).FindStringSubmatch(out)[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			var want []int64
			for _, m := range backupRE.FindAllStringSubmatch(out, -1) {
				n, _ := strconv.ParseInt(m[1], 10, 64)
				want = append(want, n*bs)
			}
			b := make([]byte, superblockSize)
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.ReadAt(b, 1024); err != nil {
				t.Fatal(err)
			}
			sb, err := parseSuperblock(b)
			if err != nil {
				t.Fatal(err)
			}
			if sb.BlockSize != bs {
				t.Errorf("block size %d; dumpe2fs says %d", sb.BlockSize, bs)
			}
			if diff := cmp.Diff(want, sb.backups(size)); diff != "" {
				t.Errorf("backups mismatch with dumpe2fs (-want +got):\n%s", diff)
			}
			if name == "ext4 label" && (sb.Label != "old-label" || sb.kind() != "ext4") {
				t.Errorf("label %q, kind %q; want old-label, ext4", sb.Label, sb.kind())
			}
		})
	}
}

// TestScan checks that scan finds an old filesystem inside an old GPT
// partition and returns regions covering its backups and both ends of the
// disk and of the partition.
func TestScan(t *testing.T) {
	t.Parallel()
	needTools(t, "mke2fs")
	const size = 2 << 30
	p := sparseImage(t, size)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l, err := planGPT(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeGPT(f, l, randomGUID(), randomGUID(), linuxFilesystemType, "old"); err != nil {
		t.Fatal(err)
	}
	tool(t, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-E", fmt.Sprintf("offset=%d", l.PartOffset()), p, strconv.FormatInt(l.PartSize()/4096, 10))
	got, err := scan(f, size, 0)
	if err != nil {
		t.Fatal(err)
	}
	covered := func(off, n int64) bool {
		for _, g := range got.Regions {
			if off >= g.Off && off+n <= g.Off+g.Len {
				return true
			}
		}
		return false
	}
	off := l.PartOffset()
	for _, want := range []region{
		{0, edgeBytes}, {size - edgeBytes, edgeBytes}, // disk ends: MBR, both GPTs
		{off, edgeBytes}, {off + l.PartSize() - edgeBytes, edgeBytes}, // partition ends
		{off + 32768*4096, 1024}, {off + 3*32768*4096, 1024}, {off + 7*32768*4096, 1024}, // ext4 backups
		{off + 64<<20, 4096}, // btrfs mirror
	} {
		if !covered(want.Off, want.Len) {
			t.Errorf("scan regions %v don't cover %v", got.Regions, want)
		}
	}
	joined := strings.Join(got.Found, "; ")
	for _, want := range []string{"gpt (512-byte sectors, header at 512, 1 partitions)", "ext4 at 1048576 (", "backup superblocks)"} {
		if !strings.Contains(joined, want) {
			t.Errorf("scan found %q; want it to mention %q", joined, want)
		}
	}
	checkRegions(t, got.Regions, size)
}

// checkRegions asserts the invariants of scan's regions: within the disk,
// sorted, disjoint, page-aligned (except where clipped at the end).
func checkRegions(t testing.TB, regs []region, size int64) {
	t.Helper()
	for i, g := range regs {
		if g.Off < 0 || g.Len <= 0 || g.Off+g.Len > size || g.Off%pageBytes != 0 ||
			((g.Off+g.Len)%pageBytes != 0 && g.Off+g.Len != size) {
			t.Fatalf("region %d %+v bad for a disk of %d bytes", i, g, size)
		}
		if i > 0 && regs[i-1].Off+regs[i-1].Len >= g.Off {
			t.Fatalf("regions %+v and %+v overlap or touch", regs[i-1], g)
		}
	}
}

// extSuperblock builds a superblock for the fuzz seeds.
func extSuperblock(logBS, blocks, bpg, first, compat, rocompat uint32, bgs [2]uint32) []byte {
	b := make([]byte, superblockSize)
	le := binary.LittleEndian
	le.PutUint32(b[0x4:], blocks)
	le.PutUint32(b[0x14:], first)
	le.PutUint32(b[0x18:], logBS)
	le.PutUint32(b[0x20:], bpg)
	le.PutUint16(b[0x38:], extMagic)
	le.PutUint32(b[0x4c:], 1)
	le.PutUint32(b[0x5c:], compat)
	le.PutUint32(b[0x64:], rocompat)
	le.PutUint32(b[0x24c:], bgs[0])
	le.PutUint32(b[0x250:], bgs[1])
	return b
}

func FuzzParseSuperblock(f *testing.F) {
	f.Add(extSuperblock(2, 262144, 32768, 0, 0, extROCompatSparseSuper, [2]uint32{}), int64(1<<30))
	f.Add(extSuperblock(0, 1048576, 8192, 1, 0, extROCompatSparseSuper, [2]uint32{}), int64(1<<30))
	f.Add(extSuperblock(2, 262144, 8, 0, 0, 0, [2]uint32{}), int64(1<<40))
	f.Add(extSuperblock(2, 0xffffffff, 32768, 0, extCompatSparseSuper2, 0, [2]uint32{1, 7}), int64(1<<62))
	f.Add(extSuperblock(6, 0xffffffff, 8, 0xfffffffe, 0, 0, [2]uint32{}), int64(1<<62))
	f.Fuzz(func(t *testing.T, b []byte, limit int64) {
		if len(b) > 4096 {
			return
		}
		sb, err := parseSuperblock(b)
		if err != nil {
			return
		}
		if sb.BlockSize < 1024 || sb.BlockSize > 65536 || sb.BlockSize&(sb.BlockSize-1) != 0 {
			t.Fatalf("block size %d", sb.BlockSize)
		}
		_ = sb.kind()
		offs := sb.backups(limit)
		if len(offs) > maxBackups {
			t.Fatalf("%d backups, cap is %d", len(offs), maxBackups)
		}
		for i, off := range offs {
			if off <= 0 || off+superblockSize > limit {
				t.Fatalf("backup at %d outside (0, %d]", off, limit)
			}
			if i > 0 && off <= offs[i-1] {
				t.Fatalf("backups not increasing: %v", offs)
			}
			block := uint64(off / sb.BlockSize)
			if off%sb.BlockSize != 0 || (block-sb.FirstDataBlock)%sb.BlocksPerGroup != 0 {
				t.Fatalf("backup at %d is not at the start of a group", off)
			}
		}
	})
}

// FuzzScan runs the whole old-layout scan over arbitrary small images.
func FuzzScan(f *testing.F) {
	// Small seeds: the fuzzer minimises every new input, and that is slow
	// for big ones.
	gpt := make([]byte, 18<<10)
	l, _ := planGPT(64<<20, 512) // a table for a bigger disk: partitions beyond the image
	_ = writeGPT(&sliceWriter{gpt}, l, randomGUID(), randomGUID(), linuxFilesystemType, "x")
	f.Add(gpt)
	img := make([]byte, 8<<10)
	copy(img[1024:], extSuperblock(0, 256, 8, 1, 0, 0, [2]uint32{}))
	copy(img[4096:], binary.LittleEndian.AppendUint32(nil, mdMagic))
	f.Add(slices.Clone(img))
	copy(img, "XFSB")
	binary.BigEndian.PutUint32(img[4:], 4096)
	binary.BigEndian.PutUint16(img[102:], 512)
	binary.BigEndian.PutUint32(img[84:], 1)
	binary.BigEndian.PutUint32(img[88:], 1000)
	f.Add(img)
	f.Add([]byte("EFI PART"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 128<<10 {
			return
		}
		got, err := scan(bytes.NewReader(b), int64(len(b)), 0)
		if err != nil {
			t.Fatalf("scan: %v", err)
		}
		checkRegions(t, got.Regions, int64(len(b)))
	})
}

// sliceWriter is an io.WriterAt over a byte slice that ignores writes past
// its end.
type sliceWriter struct{ b []byte }

func (w *sliceWriter) WriteAt(p []byte, off int64) (int, error) {
	if off < int64(len(w.b)) {
		copy(w.b[off:], p)
	}
	return len(p), nil
}

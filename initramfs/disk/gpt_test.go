package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strings"
	"testing"
	"unicode/utf16"
)

// errNoGPT is returned by readGPT when there is no valid primary GPT.
var errNoGPT = errors.New("no valid primary GPT")

// readGPT reads back the primary GPT written by writeGPT and checks both
// CRCs; it returns the first partition.
func readGPT(r io.ReaderAt, sectorSize int) (first, last int64, typ, part guid, name string, err error) {
	ss := int64(sectorSize)
	le := binary.LittleEndian
	h := make([]byte, ss)
	if _, err := r.ReadAt(h, ss); err != nil {
		return 0, 0, typ, part, "", fmt.Errorf("reading GPT header: %w", err)
	}
	if string(h[:8]) != "EFI PART" || le.Uint32(h[12:]) != gptHeaderSize {
		return 0, 0, typ, part, "", errNoGPT
	}
	want := le.Uint32(h[16:])
	le.PutUint32(h[16:], 0)
	if crc32.ChecksumIEEE(h[:gptHeaderSize]) != want {
		return 0, 0, typ, part, "", fmt.Errorf("header CRC: %w", errNoGPT)
	}
	n, esize := le.Uint32(h[80:]), le.Uint32(h[84:])
	if n != gptEntries || esize != gptEntrySize {
		return 0, 0, typ, part, "", fmt.Errorf("%d entries of %d bytes: %w", n, esize, errNoGPT)
	}
	entries := make([]byte, gptEntries*gptEntrySize)
	if _, err := r.ReadAt(entries, int64(le.Uint64(h[72:]))*ss); err != nil {
		return 0, 0, typ, part, "", fmt.Errorf("reading GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != le.Uint32(h[88:]) {
		return 0, 0, typ, part, "", fmt.Errorf("entries CRC: %w", errNoGPT)
	}
	copy(typ[:], entries[0:16])
	copy(part[:], entries[16:32])
	var u []uint16
	for i := 56; i < gptEntrySize; i += 2 {
		c := le.Uint16(entries[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return int64(le.Uint64(entries[32:])), int64(le.Uint64(entries[40:])), typ, part, string(utf16.Decode(u)), nil
}

func TestPlanGPT(t *testing.T) {
	t.Parallel()
	tests := []struct {
		size        int64
		ss          int
		first, last int64 // partition sectors
		wantErr     bool
	}{
		// 8 GiB at 512: 16777216 sectors; backup array at 16777183..16777214,
		// last usable 16777182; the partition ends on the last MiB boundary.
		{size: 8 << 30, ss: 512, first: 2048, last: 16775167},
		{size: 8 << 30, ss: 4096, first: 256, last: 2096895},
		{size: 64<<30 + 12345*512, ss: 512, first: 2048, last: 134230015},
		{size: 18 << 20, ss: 512, first: 2048, last: 34815},
		{size: 17 << 20, ss: 512, wantErr: true}, // a 15 MiB partition
		{size: 8 << 30, ss: 1000, wantErr: true},
	}
	for _, tt := range tests {
		l, err := planGPT(tt.size, tt.ss)
		if tt.wantErr {
			if err == nil {
				t.Errorf("planGPT(%d, %d) = %+v; want an error", tt.size, tt.ss, l)
			}
			continue
		}
		if err != nil || l.PartFirst != tt.first || l.PartLast != tt.last {
			t.Errorf("planGPT(%d, %d) = %d..%d, %v; want %d..%d", tt.size, tt.ss, l.PartFirst, l.PartLast, err, tt.first, tt.last)
		}
		if l.PartOffset()%alignBytes != 0 || l.PartSize()%alignBytes != 0 || l.PartLast > l.LastUsable {
			t.Errorf("planGPT(%d, %d) = %+v: partition not aligned or beyond last usable", tt.size, tt.ss, l)
		}
	}
}

func TestWriteGPT(t *testing.T) {
	t.Parallel()
	for _, ss := range []int{512, 4096} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			t.Parallel()
			p := sparseImage(t, 1<<30)
			l, err := planGPT(1<<30, ss)
			if err != nil {
				t.Fatal(err)
			}
			part := randomGUID()
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := writeGPT(f, l, randomGUID(), part, linuxFilesystemType, "rackboot-build"); err != nil {
				t.Fatal(err)
			}
			first, last, typ, gotPart, name, err := readGPT(f, ss)
			if err != nil || first != l.PartFirst || last != l.PartLast || typ != linuxFilesystemType || gotPart != part || name != "rackboot-build" {
				t.Fatalf("readGPT = %d, %d, %v, %v, %q, %v; want %d, %d, %v, %v, rackboot-build",
					first, last, typ, gotPart, name, err, l.PartFirst, l.PartLast, linuxFilesystemType, part)
			}
			// scan must find the partition again (this is how Wipe finds old
			// filesystems).
			parts, _, err := readPartitions(f, 1<<30, 0)
			if err != nil || len(parts) != 1 || parts[0] != (region{l.PartOffset(), l.PartSize()}) {
				t.Errorf("readPartitions = %v, %v; want [%v]", parts, err, region{l.PartOffset(), l.PartSize()})
			}
			if ss != 512 {
				return // sgdisk reads images with 512-byte sectors only
			}
			out := tool(t, "sgdisk", "-v", p)
			if !strings.Contains(out, "No problems found") {
				t.Errorf("sgdisk -v:\n%s", out)
			}
			info := tool(t, "sgdisk", "-i", "1", p)
			for _, want := range []string{
				"Partition GUID code: 0FC63DAF-8483-4772-8E79-3D69D8477DE4 (Linux filesystem)",
				"Partition unique GUID: " + strings.ToUpper(part.String()),
				"First sector: 2048 ", "Partition name: 'rackboot-build'",
			} {
				if !strings.Contains(info, want) {
					t.Errorf("sgdisk -i 1 lacks %q:\n%s", want, info)
				}
			}
		})
	}
}

func TestGUID(t *testing.T) {
	t.Parallel()
	const s = "0fc63daf-8483-4772-8e79-3d69d8477de4"
	g, err := parseGUID(strings.ToUpper(s))
	if err != nil || g.String() != s {
		t.Errorf("parseGUID(%q).String() = %q, %v; want %q", s, g.String(), err, s)
	}
	// The on-disk order of the Linux filesystem type, per the UEFI spec.
	want := []byte{0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4}
	if string(g[:]) != string(want) {
		t.Errorf("parseGUID(%q) = % x; want % x", s, g[:], want)
	}
	r := randomGUID()
	if r.String()[14] != '4' || !strings.ContainsRune("89ab", rune(r.String()[19])) {
		t.Errorf("randomGUID() = %s; want version 4, RFC 4122 variant", r)
	}
	for _, bad := range []string{"", "0fc63daf-8483-4772-8e79-3d69d8477dzz", strings.Repeat("x", 36)} {
		if _, err := parseGUID(bad); err == nil {
			t.Errorf("parseGUID(%q) succeeded; want an error", bad)
		}
	}
}

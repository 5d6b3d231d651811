package disk

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"unicode/utf16"
)

// This file writes a GUID Partition Table (UEFI 2.10, section 5.3) with a
// protective MBR and a single partition. It works in logical sectors of any
// size (512 or 4096), which is why it is written here rather than taken from
// a library.

const (
	gptEntries    = 128 // entries in the partition array (the UEFI minimum of 16 KiB)
	gptEntrySize  = 128
	gptHeaderSize = 92
	alignBytes    = 1 << 20 // partitions start and end on 1 MiB boundaries, as parted and sgdisk do

	// minPartitionBytes is the smallest partition Build makes; mke2fs needs
	// room for a journal.
	minPartitionBytes = 16 << 20
)

// linuxFilesystemType is the GPT partition type GUID of a Linux filesystem
// (0FC63DAF-8483-4772-8E79-3D69D8477DE4).
var linuxFilesystemType = mustGUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")

// guid is a GUID in its on-disk (mixed-endian) byte order.
type guid [16]byte

// String formats g as blkid and sgdisk print it (lowercase).
func (g guid) String() string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(g[0:]), le.Uint16(g[4:]), le.Uint16(g[6:]), g[8:10], g[10:])
}

func mustGUID(s string) guid {
	g, err := parseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// parseGUID parses the text form of a GUID into on-disk byte order.
func parseGUID(s string) (guid, error) {
	var g guid
	var a uint32
	var b, c uint16
	var d [2]byte
	var e [6]byte
	if len(s) != 36 {
		return g, fmt.Errorf("GUID %q: want 36 characters", s)
	}
	if _, err := fmt.Sscanf(s, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		&a, &b, &c, &d[0], &d[1], &e[0], &e[1], &e[2], &e[3], &e[4], &e[5]); err != nil {
		return g, fmt.Errorf("GUID %q: %w", s, err)
	}
	binary.LittleEndian.PutUint32(g[0:], a)
	binary.LittleEndian.PutUint16(g[4:], b)
	binary.LittleEndian.PutUint16(g[6:], c)
	copy(g[8:], d[:])
	copy(g[10:], e[:])
	return g, nil
}

// randomGUID returns a version 4 (random) GUID. It only has to be unique,
// not secret, so math/rand/v2's runtime source (ChaCha8, seeded from the
// kernel) does, without linking crypto/rand into the initramfs.
func randomGUID() guid {
	var g guid
	binary.LittleEndian.PutUint64(g[0:], rand.Uint64())
	binary.LittleEndian.PutUint64(g[8:], rand.Uint64())
	g[7] = g[7]&0x0f | 0x40 // version 4, in the little-endian third field
	g[8] = g[8]&0x3f | 0x80 // RFC 4122 variant
	return g
}

// gptLayout is where a single-partition GPT puts things, in logical
// sectors of SectorSize bytes.
type gptLayout struct {
	SectorSize   int64
	Sectors      int64 // total sectors on the disk
	EntrySectors int64 // sectors of one partition-entry array
	FirstUsable  int64
	LastUsable   int64
	PartFirst    int64 // first sector of the partition
	PartLast     int64 // last sector of the partition (inclusive)
}

// PartOffset returns the partition's offset in bytes.
func (l gptLayout) PartOffset() int64 { return l.PartFirst * l.SectorSize }

// PartSize returns the partition's size in bytes.
func (l gptLayout) PartSize() int64 { return (l.PartLast - l.PartFirst + 1) * l.SectorSize }

// planGPT lays out a GPT with one partition on a disk of size bytes: the
// partition starts at 1 MiB and ends on the last 1 MiB boundary before the
// backup partition array, so its size is a whole number of MiB.
func planGPT(size int64, sectorSize int) (gptLayout, error) {
	ss := int64(sectorSize)
	if ss < 512 || ss > alignBytes || ss&(ss-1) != 0 {
		return gptLayout{}, fmt.Errorf("sector size %d: want a power of two from 512 to %d", ss, alignBytes)
	}
	l := gptLayout{SectorSize: ss, Sectors: size / ss}
	l.EntrySectors = (gptEntries*gptEntrySize + ss - 1) / ss
	l.FirstUsable = 2 + l.EntrySectors
	l.LastUsable = l.Sectors - 2 - l.EntrySectors
	align := alignBytes / ss
	l.PartFirst = (l.FirstUsable + align - 1) / align * align
	l.PartLast = (l.LastUsable+1)/align*align - 1
	if l.PartLast < l.PartFirst || l.PartSize() < minPartitionBytes {
		return gptLayout{}, fmt.Errorf("disk of %d bytes is too small for a %d MiB partition", size, minPartitionBytes>>20)
	}
	return l, nil
}

// writeGPT writes the protective MBR, the primary and backup GPT headers
// and partition arrays describing one partition of type typ, named name.
// It writes nothing else: the caller clears the rest of the first and last
// MiB.
func writeGPT(w io.WriterAt, l gptLayout, diskGUID, partGUID, typ guid, name string) error {
	u := utf16.Encode([]rune(name))
	if len(u) > 36 {
		return fmt.Errorf("partition name %q is longer than 36 UTF-16 code units", name)
	}
	le := binary.LittleEndian
	ss := l.SectorSize

	mbr := make([]byte, ss)
	e := mbr[446:462]
	e[1], e[2], e[3] = 0x00, 0x02, 0x00 // CHS of LBA 1
	e[4] = 0xee
	e[5], e[6], e[7] = 0xff, 0xff, 0xff
	le.PutUint32(e[8:], 1)
	le.PutUint32(e[12:], uint32(min(l.Sectors-1, 0xffffffff)))
	mbr[510], mbr[511] = 0x55, 0xaa

	entries := make([]byte, l.EntrySectors*ss)
	pe := entries[:gptEntrySize]
	copy(pe[0:16], typ[:])
	copy(pe[16:32], partGUID[:])
	le.PutUint64(pe[32:], uint64(l.PartFirst))
	le.PutUint64(pe[40:], uint64(l.PartLast))
	for i, c := range u {
		le.PutUint16(pe[56+2*i:], c)
	}
	entriesCRC := crc32.ChecksumIEEE(entries[:gptEntries*gptEntrySize])

	header := func(self, alt, entriesLBA int64) []byte {
		h := make([]byte, ss)
		copy(h, "EFI PART")
		le.PutUint32(h[8:], 0x00010000)
		le.PutUint32(h[12:], gptHeaderSize)
		le.PutUint64(h[24:], uint64(self))
		le.PutUint64(h[32:], uint64(alt))
		le.PutUint64(h[40:], uint64(l.FirstUsable))
		le.PutUint64(h[48:], uint64(l.LastUsable))
		copy(h[56:72], diskGUID[:])
		le.PutUint64(h[72:], uint64(entriesLBA))
		le.PutUint32(h[80:], gptEntries)
		le.PutUint32(h[84:], gptEntrySize)
		le.PutUint32(h[88:], entriesCRC)
		le.PutUint32(h[16:], crc32.ChecksumIEEE(h[:gptHeaderSize]))
		return h
	}
	last := l.Sectors - 1
	backupEntries := last - l.EntrySectors
	writes := []struct {
		lba int64
		b   []byte
	}{
		{0, mbr},
		{2, entries},
		{backupEntries, entries},
		{last, header(last, 1, backupEntries)},
		{1, header(1, last, 2)}, // the primary header last: it makes the table valid
	}
	for _, wr := range writes {
		if _, err := w.WriteAt(wr.b, wr.lba*ss); err != nil {
			return fmt.Errorf("writing GPT at sector %d: %w", wr.lba, err)
		}
	}
	return nil
}

package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// This file finds where an old disk layout keeps the signatures that blkid
// and wipefs look for, so that Wipe can overwrite them even when the bulk of
// the disk is only discarded. It parses just enough: partition tables (GPT
// and MBR) to find the old partitions, and in each partition (and the whole
// disk) the ext2/3/4 and XFS superblocks to find their backups. Everything
// it reads is untrusted (a build ran as root on this disk), so every number
// is bounds-checked and every list is capped.

const (
	// edgeBytes is how much is zeroed at both ends of the disk and of every
	// old partition: it covers the protective MBR and both GPT copies, the
	// LVM label and metadata area, mdraid 0.90/1.0/1.1/1.2, LUKS, bcache,
	// swap (all page sizes), ZFS labels and the primary superblocks of
	// ext*, XFS and btrfs.
	edgeBytes = 1 << 20

	// pageBytes is the unit of signature zeroing: a superblock is zeroed as
	// the aligned 4 KiB around it, which is whole logical sectors on 512e and
	// 4Kn disks and whole page-cache pages.
	pageBytes = 4096

	// maxPartitions caps how many old partition entries are followed.
	maxPartitions = 128

	// maxBackups caps the backup superblocks zeroed per old filesystem, so
	// that a hostile superblock (tiny groups, no sparse_super) can't turn
	// the next boot's wipe into gigabytes of writes: at most 32 MiB.
	maxBackups = 8192
)

// region is a byte range [Off, Off+Len) of a disk.
type region struct{ Off, Len int64 }

// oldLayout is what scan found on a disk before it was wiped.
type oldLayout struct {
	Regions []region // sorted, merged, 4 KiB-aligned, within the disk
	Found   []string // human-readable findings, e.g. "gpt", "ext4 at 1048576 (4 backups)"
}

// scan reads the signatures of the old layout of the disk r of size bytes
// and returns the regions that must be zeroed. sectorSize is the logical
// sector size (0 if unknown, as for an image file: then 512 and 4096 are
// both tried for the GPT). A read error is returned; garbage is not an
// error, it just yields fewer findings.
func scan(r io.ReaderAt, size int64, sectorSize int) (oldLayout, error) {
	var l oldLayout
	if size <= 0 {
		return l, nil
	}
	parts, found, err := readPartitions(r, size, sectorSize)
	if err != nil {
		return l, err
	}
	l.Found = append(l.Found, found...)
	containers := append([]region{{0, size}}, parts...)
	var regs []region
	for _, c := range containers {
		cr, cf, err := scanContainer(r, c)
		if err != nil {
			return l, err
		}
		regs = append(regs, cr...)
		l.Found = append(l.Found, cf...)
	}
	l.Regions = normalize(regs, size)
	return l, nil
}

// scanContainer returns the regions to zero in one container (the whole
// disk or an old partition) and what it found there.
func scanContainer(r io.ReaderAt, c region) ([]region, []string, error) {
	regs := []region{{c.Off, min(edgeBytes, c.Len)}}
	if c.Len > edgeBytes {
		regs = append(regs, region{c.Off + c.Len - edgeBytes, edgeBytes})
	}
	// btrfs superblock mirrors at 64 MiB and 256 GiB (the primary, at
	// 64 KiB, is in the head).
	for _, m := range []int64{64 << 20, 256 << 30} {
		if m+pageBytes <= c.Len {
			regs = append(regs, region{c.Off + m, pageBytes})
		}
	}
	var found []string
	head := make([]byte, 68*1024)
	n, err := readAtMost(r, head, c.Off, c.Len)
	if err != nil {
		return nil, nil, err
	}
	head = head[:n]
	if len(head) >= 2048 {
		if sb, err := parseSuperblock(head[1024:2048]); err == nil {
			bk := sb.backups(c.Len)
			for _, off := range bk {
				regs = append(regs, region{c.Off + off, superblockSize})
			}
			found = append(found, fmt.Sprintf("%s at %d (%d backup superblocks)", sb.kind(), c.Off, len(bk)))
		}
	}
	if xs, err := parseXFS(head); err == nil {
		ags := xs.agOffsets(c.Len)
		for _, off := range ags {
			regs = append(regs, region{c.Off + off, xs.sectorSize})
		}
		found = append(found, fmt.Sprintf("xfs at %d (%d allocation groups)", c.Off, len(ags)))
	}
	for i := int64(0); i < 4; i++ { // LVM2 label in one of the first 4 sectors
		if o := 512*i + 8; o <= int64(len(head)) && bytes.Equal(head[512*i:o], []byte("LABELONE")) {
			found = append(found, fmt.Sprintf("LVM2 label at %d", c.Off+512*i))
		}
	}
	for _, o := range []int64{0, 4096} { // mdraid 1.1 and 1.2
		if o+4 <= int64(len(head)) && binary.LittleEndian.Uint32(head[o:]) == mdMagic {
			found = append(found, fmt.Sprintf("mdraid 1.x at %d", c.Off+o))
		}
	}
	if 65536+72 <= len(head) && bytes.Equal(head[65536+64:65536+72], []byte("_BHRfS_M")) {
		found = append(found, fmt.Sprintf("btrfs at %d", c.Off))
	}
	for _, page := range []int{4096, 8192, 16384, 65536} {
		if page <= len(head) && (bytes.Equal(head[page-10:page], []byte("SWAPSPACE2")) ||
			bytes.Equal(head[page-10:page], []byte("SWAP-SPACE"))) {
			found = append(found, fmt.Sprintf("swap at %d", c.Off))
		}
	}
	// mdraid 0.90 (64 KiB-aligned, 64 KiB from the end) and 1.0 (8 KiB
	// from the end, 4 KiB-aligned): only reported, the tail zeroing
	// covers them.
	for _, o := range []int64{c.Len&^(64<<10-1) - 64<<10, (c.Len - 8<<10) &^ (4<<10 - 1)} {
		var b [4]byte
		if o < 0 || o+4 > c.Len {
			continue
		}
		if _, err := r.ReadAt(b[:], c.Off+o); err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, err
		}
		if binary.LittleEndian.Uint32(b[:]) == mdMagic {
			found = append(found, fmt.Sprintf("mdraid at %d", c.Off+o))
		}
	}
	return regs, found, nil
}

const mdMagic = 0xa92b4efc

// readAtMost reads up to len(b) bytes at off, but not past limit bytes of
// the container; it returns how many it read. Reading short at the end of
// the disk is not an error.
func readAtMost(r io.ReaderAt, b []byte, off, limit int64) (int, error) {
	if int64(len(b)) > limit {
		b = b[:limit]
	}
	n, err := r.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("reading at %d: %w", off, err)
	}
	return n, nil
}

// normalize aligns the regions to pageBytes, clips them to [0, size) and
// merges overlapping or adjacent ones.
func normalize(regs []region, size int64) []region {
	out := make([]region, 0, len(regs))
	for _, g := range regs {
		if g.Len <= 0 || g.Off >= size || g.Off+g.Len <= 0 {
			continue
		}
		start := max(0, g.Off) &^ (pageBytes - 1)
		end := min(size, (g.Off+g.Len+pageBytes-1)&^(pageBytes-1))
		out = append(out, region{start, end - start})
	}
	slices.SortFunc(out, func(a, b region) int { return cmpInt64(a.Off, b.Off) })
	merged := out[:0]
	for _, g := range out {
		if n := len(merged); n > 0 && g.Off <= merged[n-1].Off+merged[n-1].Len {
			last := &merged[n-1]
			last.Len = max(last.Len, g.Off+g.Len-last.Off)
			continue
		}
		merged = append(merged, g)
	}
	return merged
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// readPartitions returns the partitions that an old GPT (primary or backup
// header) or MBR describes, as byte regions inside [0, size). Checksums are
// not verified: a damaged table still tells where data may be.
func readPartitions(r io.ReaderAt, size int64, sectorSize int) ([]region, []string, error) {
	sizes := []int{sectorSize}
	if sectorSize == 0 {
		sizes = []int{512, 4096}
	}
	var parts []region
	var found []string
	for _, ss := range sizes {
		for _, hdrOff := range []int64{int64(ss), size - int64(ss)} {
			if hdrOff <= 0 || hdrOff >= size {
				continue
			}
			hdr := make([]byte, ss)
			n, err := readAtMost(r, hdr, hdrOff, size-hdrOff)
			if err != nil {
				return nil, nil, err
			}
			if n < 92 {
				continue
			}
			p, ok, err := gptPartitions(r, hdr, int64(ss), size)
			if err != nil {
				return nil, nil, err
			}
			if ok {
				found = append(found, fmt.Sprintf("gpt (%d-byte sectors, header at %d, %d partitions)", ss, hdrOff, len(p)))
				parts = append(parts, p...)
			}
		}
	}
	mbr := make([]byte, 512)
	if n, err := readAtMost(r, mbr, 0, size); err != nil {
		return nil, nil, err
	} else if n == 512 {
		p := mbrPartitions(mbr, int64(max(sectorSize, 512)), size)
		if len(p) > 0 {
			found = append(found, fmt.Sprintf("mbr (%d partitions)", len(p)))
			parts = append(parts, p...)
		}
	}
	// The same partition is usually in the primary and the backup table.
	slices.SortFunc(parts, func(a, b region) int {
		if c := cmpInt64(a.Off, b.Off); c != 0 {
			return c
		}
		return cmpInt64(a.Len, b.Len)
	})
	parts = slices.Compact(parts)
	if len(parts) > maxPartitions {
		parts = parts[:maxPartitions]
	}
	return parts, found, nil
}

// gptPartitions parses the GPT header hdr (one sector) and reads its
// partition entries. ok is false when hdr is not a GPT header.
func gptPartitions(r io.ReaderAt, hdr []byte, ss, size int64) (parts []region, ok bool, err error) {
	if !bytes.Equal(hdr[:8], []byte("EFI PART")) {
		return nil, false, nil
	}
	le := binary.LittleEndian
	entriesLBA := le.Uint64(hdr[72:])
	count := int64(le.Uint32(hdr[80:]))
	esize := int64(le.Uint32(hdr[84:]))
	if esize < 128 || esize > 4096 || esize%8 != 0 || count <= 0 || entriesLBA >= uint64(size/ss) {
		return nil, false, nil
	}
	count = min(count, maxPartitions)
	buf := make([]byte, count*esize)
	off := int64(entriesLBA) * ss
	n, err := readAtMost(r, buf, off, size-off)
	if err != nil {
		return nil, false, err
	}
	sectors := uint64(size / ss)
	for i := int64(0); (i+1)*esize <= int64(n); i++ {
		e := buf[i*esize : (i+1)*esize]
		if allZero(e[:16]) {
			continue
		}
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		if first > last || last >= sectors {
			continue
		}
		parts = append(parts, region{int64(first) * ss, int64(last-first+1) * ss})
	}
	return parts, true, nil
}

// mbrPartitions parses the four primary entries of an MBR (sector 0). A
// protective MBR (type 0xEE) and extended partitions (whose logical
// partitions are not followed) yield nothing.
func mbrPartitions(mbr []byte, ss, size int64) []region {
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return nil
	}
	var parts []region
	for i := range 4 {
		e := mbr[446+16*i : 446+16*(i+1)]
		switch e[4] {
		case 0x00, 0xee, 0x05, 0x0f, 0x85:
			continue
		}
		start := int64(binary.LittleEndian.Uint32(e[8:])) * ss
		n := int64(binary.LittleEndian.Uint32(e[12:])) * ss
		if n == 0 || start >= size {
			continue
		}
		parts = append(parts, region{start, min(n, size-start)})
	}
	return parts
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// superblockSize is the size of an ext2/3/4 superblock.
const superblockSize = 1024

// ext2/3/4 feature bits this package looks at (see the kernel's
// fs/ext4/ext4.h).
const (
	extCompatHasJournal    = 0x4
	extCompatSparseSuper2  = 0x200
	extROCompatSparseSuper = 0x1
	extIncompatExtents     = 0x40
	extIncompat64Bit       = 0x80
	extIncompatFlexBG      = 0x200
	extIncompatMetaBG      = 0x10
	extMagic               = 0xef53
	extMaxLogBlockSize     = 6 // 64 KiB blocks
	extMinBlocksPerGroup   = 8
)

// superblock is the part of an ext2/3/4 superblock that locates its
// backups.
type superblock struct {
	BlockSize      int64
	BlocksCount    uint64
	FirstDataBlock uint64
	BlocksPerGroup uint64
	RevLevel       uint32
	Compat         uint32
	Incompat       uint32
	ROCompat       uint32
	BackupGroups   [2]uint32 // s_backup_bgs, used with sparse_super2
	Label          string
}

var errNotExt = errors.New("not an ext2/3/4 superblock")

// parseSuperblock parses b, the 1024 bytes of an ext2/3/4 superblock (at
// byte 1024 of the filesystem). It rejects anything the kernel would not
// mount as far as locating backups is concerned: bad magic, block size
// above 64 KiB, blocks per group outside [8, 8*block size], no blocks.
func parseSuperblock(b []byte) (superblock, error) {
	if len(b) < superblockSize {
		return superblock{}, fmt.Errorf("superblock is %d bytes, want %d: %w", len(b), superblockSize, errNotExt)
	}
	le := binary.LittleEndian
	if le.Uint16(b[0x38:]) != extMagic {
		return superblock{}, errNotExt
	}
	logBS := le.Uint32(b[0x18:])
	if logBS > extMaxLogBlockSize {
		return superblock{}, fmt.Errorf("log block size %d: %w", logBS, errNotExt)
	}
	sb := superblock{
		BlockSize:      1024 << logBS,
		BlocksCount:    uint64(le.Uint32(b[0x4:])),
		FirstDataBlock: uint64(le.Uint32(b[0x14:])),
		BlocksPerGroup: uint64(le.Uint32(b[0x20:])),
		RevLevel:       le.Uint32(b[0x4c:]),
	}
	if sb.RevLevel >= 1 {
		sb.Compat = le.Uint32(b[0x5c:])
		sb.Incompat = le.Uint32(b[0x60:])
		sb.ROCompat = le.Uint32(b[0x64:])
		sb.Label = string(bytes.TrimRight(b[0x78:0x88], "\x00"))
		sb.BackupGroups = [2]uint32{le.Uint32(b[0x24c:]), le.Uint32(b[0x250:])}
	}
	if sb.Incompat&extIncompat64Bit != 0 {
		sb.BlocksCount |= uint64(le.Uint32(b[0x150:])) << 32
	}
	if sb.BlocksPerGroup < extMinBlocksPerGroup || sb.BlocksPerGroup > 8*uint64(sb.BlockSize) {
		return superblock{}, fmt.Errorf("%d blocks per group: %w", sb.BlocksPerGroup, errNotExt)
	}
	if sb.FirstDataBlock >= sb.BlocksCount {
		return superblock{}, fmt.Errorf("first data block %d of %d: %w", sb.FirstDataBlock, sb.BlocksCount, errNotExt)
	}
	return sb, nil
}

// groups returns the number of block groups.
func (sb superblock) groups() uint64 {
	return (sb.BlocksCount - sb.FirstDataBlock + sb.BlocksPerGroup - 1) / sb.BlocksPerGroup
}

// hasBackup reports whether block group g (> 0) holds a backup superblock.
func (sb superblock) hasBackup(g uint64) bool {
	switch {
	case sb.Compat&extCompatSparseSuper2 != 0:
		return g == uint64(sb.BackupGroups[0]) || g == uint64(sb.BackupGroups[1])
	case sb.RevLevel == 0 || sb.ROCompat&extROCompatSparseSuper == 0:
		return true
	}
	return g == 1 || isPower(g, 3) || isPower(g, 5) || isPower(g, 7)
}

func isPower(g, base uint64) bool {
	for g > 1 && g%base == 0 {
		g /= base
	}
	return g == 1
}

// backups returns the byte offsets, relative to the start of the
// filesystem, of its backup superblocks that lie within limit bytes, in
// increasing order, at most maxBackups of them. A backup superblock starts
// at the first block of its group (unlike the primary, which is at byte
// 1024).
func (sb superblock) backups(limit int64) []int64 {
	var out []int64
	add := func(g uint64) bool {
		if g == 0 || g >= sb.groups() || !sb.hasBackup(g) {
			return true
		}
		maxBlock := uint64(limit) / uint64(sb.BlockSize)
		if g > maxBlock/sb.BlocksPerGroup {
			return false
		}
		block := g*sb.BlocksPerGroup + sb.FirstDataBlock
		if block > maxBlock {
			return false
		}
		off := int64(block) * sb.BlockSize
		if off+superblockSize > limit {
			return false
		}
		out = append(out, off)
		return len(out) < maxBackups
	}
	switch {
	case sb.Compat&extCompatSparseSuper2 != 0:
		a, b := uint64(sb.BackupGroups[0]), uint64(sb.BackupGroups[1])
		if a > b {
			a, b = b, a
		}
		if add(a) && a != b {
			add(b)
		}
	case sb.RevLevel == 0 || sb.ROCompat&extROCompatSparseSuper == 0:
		for g := uint64(1); g < sb.groups() && add(g); g++ {
		}
	default:
		// Groups 1, 3^k, 5^k, 7^k in increasing order.
		next := []uint64{1, 3, 5, 7}
		for {
			g := slices.Min(next)
			if g >= sb.groups() || !add(g) {
				break
			}
			for i, base := range []uint64{1, 3, 5, 7} {
				if next[i] == g {
					if base == 1 {
						next[i] = ^uint64(0)
					} else if next[i] > ^uint64(0)/base {
						next[i] = ^uint64(0)
					} else {
						next[i] *= base
					}
				}
			}
		}
	}
	return out
}

// kind names the filesystem as blkid would: ext4 if it uses any ext4-only
// feature, ext3 if it has a journal, else ext2.
func (sb superblock) kind() string {
	switch {
	case sb.Incompat&(extIncompatExtents|extIncompat64Bit|extIncompatFlexBG|extIncompatMetaBG) != 0:
		return "ext4"
	case sb.Compat&extCompatHasJournal != 0:
		return "ext3"
	}
	return "ext2"
}

// xfsSuper is the part of an XFS superblock that locates the secondary
// superblocks, one at the start of each allocation group.
type xfsSuper struct {
	blockSize  int64
	sectorSize int64
	agBlocks   int64
	agCount    int64
}

var errNotXFS = errors.New("not an XFS superblock")

// parseXFS parses the XFS superblock at the start of b (big-endian).
func parseXFS(b []byte) (xfsSuper, error) {
	if len(b) < 512 || !bytes.Equal(b[:4], []byte("XFSB")) {
		return xfsSuper{}, errNotXFS
	}
	be := binary.BigEndian
	s := xfsSuper{
		blockSize:  int64(be.Uint32(b[4:])),
		sectorSize: int64(be.Uint16(b[102:])),
		agBlocks:   int64(be.Uint32(b[84:])),
		agCount:    int64(be.Uint32(b[88:])),
	}
	if s.blockSize < 512 || s.blockSize > 65536 || s.blockSize&(s.blockSize-1) != 0 ||
		s.sectorSize < 512 || s.sectorSize > 32768 || s.sectorSize&(s.sectorSize-1) != 0 ||
		s.agBlocks <= 0 || s.agCount <= 0 {
		return xfsSuper{}, errNotXFS
	}
	return s, nil
}

// agOffsets returns the byte offsets of the secondary superblocks within
// limit bytes, at most maxBackups of them.
func (s xfsSuper) agOffsets(limit int64) []int64 {
	var out []int64
	agBytes := s.agBlocks * s.blockSize
	for ag := int64(1); ag < s.agCount && len(out) < maxBackups; ag++ {
		if ag > (limit-s.sectorSize)/agBytes {
			break
		}
		out = append(out, ag*agBytes)
	}
	return out
}

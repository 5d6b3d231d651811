package cow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The live map ("live" beside "data" and "map") is the layer's allocation
// bitmap as it is right now, one bit per chunk, kept in the page cache and
// never fsynced:
//
//	header: "RBCOWLIV" | version u32 | chunk shift u32 | chunks u64 |
//	        boot ID [16]byte | reserved | crc32c u32 at 60   (page 0)
//	bits:   from offset 4096, bit c%8 of byte c/8 set when chunk c is in
//	        the layer
//
// It exists for one failure: a crash of the server process. The kernel
// client never resends a write it got a reply for, so a write acknowledged
// before a FLUSH must survive the process. The data file's pages survive
// in the page cache, and so does the live map, which every state change
// updates before the write is acknowledged: through a shared mapping of
// the file, a few memory stores and no system call, where the filesystem
// makes that safe (see live.back), or else a write to the file. On open,
// a live map written under the running kernel (same boot ID) is the truth
// and is made durable at once; one from an earlier boot (a power loss, a
// reboot) may not have reached the disk with its data, and the durable
// map log wins.
const (
	liveMagic     = "RBCOWLIV"
	liveVersion   = 1
	liveHeaderLen = 64
	liveBitsOff   = 4096
	liveName      = "live"
)

// BootID identifies a boot of the kernel (/proc/sys/kernel/random/boot_id):
// the page cache survives a process crash, not a reboot.
type BootID [16]byte

// live is an open live map.
type live struct {
	f    File
	bits []byte // shared mapping of the bits, or nil: write through f
}

func appendLiveHeader(b []byte, shift uint, chunks uint64, boot BootID) []byte {
	start := len(b)
	b = append(b, liveMagic...)
	b = binary.BigEndian.AppendUint32(b, liveVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(shift))
	b = binary.BigEndian.AppendUint64(b, chunks)
	b = append(b, boot[:]...)
	b = append(b, make([]byte, liveHeaderLen-4-(len(b)-start))...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// parseLiveHeader returns the boot ID of a live map header that matches
// the layer's geometry.
func parseLiveHeader(b []byte, shift uint, chunks uint64) (BootID, bool) {
	if len(b) < liveHeaderLen || string(b[:8]) != liveMagic ||
		crc32.Checksum(b[:liveHeaderLen-4], castagnoli) != binary.BigEndian.Uint32(b[liveHeaderLen-4:]) ||
		binary.BigEndian.Uint32(b[8:]) != liveVersion || binary.BigEndian.Uint32(b[12:]) != uint32(shift) ||
		binary.BigEndian.Uint64(b[16:]) != chunks {
		return BootID{}, false
	}
	return BootID(b[24:40]), true
}

func liveSize(chunks uint64) int64 { return liveBitsOff + int64((chunks+7)/8) }

// openLive opens (creating if needed) the live map of a layer. If it was
// written under boot, it returns the chunks it holds (found=true);
// otherwise it resets it to alloc, the durable state, under boot.
func openLive(fsys FS, dir string, shift uint, chunks uint64, boot BootID, alloc *bitmap) (*live, *bitmap, bool, error) {
	f, err := fsys.OpenFile(filepath.Join(dir, liveName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, false, fmt.Errorf("opening live map: %w", err)
	}
	l := &live{f: f}
	hdr := make([]byte, liveHeaderLen)
	n, err := f.ReadAt(hdr, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, nil, false, fmt.Errorf("reading live map: %w", err)
	}
	size := liveSize(chunks)
	if fi, err := f.Stat(); err == nil && fi.Size() == size && n == liveHeaderLen {
		if b, ok := parseLiveHeader(hdr, shift, chunks); ok && b == boot {
			if err := l.back(size); err != nil {
				l.close()
				return nil, nil, false, err
			}
			found, err := l.read(chunks)
			if err != nil {
				l.close()
				return nil, nil, false, err
			}
			return l, found, true, nil
		}
	}
	// New, from another boot, or damaged: start over from the durable
	// state. The header is the commit point: a process killed before it
	// is written leaves a live map that no open trusts, so the bits go
	// first and the header, which vouches for them, last. Truncating to
	// zero takes the old header away before anything else changes.
	// (Nothing needs to be synced: a live map is only trusted within the
	// boot that wrote it, and within one boot the page cache is the
	// truth.)
	if err := errors.Join(f.Truncate(0), f.Truncate(size)); err != nil {
		f.Close()
		return nil, nil, false, fmt.Errorf("resetting live map: %w", err)
	}
	if err := l.back(size); err != nil {
		l.close()
		return nil, nil, false, err
	}
	if err := l.fill(alloc, chunks); err != nil {
		l.close()
		return nil, nil, false, err
	}
	if _, err := f.WriteAt(appendLiveHeader(nil, shift, chunks, boot), 0); err != nil {
		l.close()
		return nil, nil, false, fmt.Errorf("writing live map: %w", err)
	}
	return l, nil, false, nil
}

// fill copies alloc into the live map's bits, which are all clear: one
// bitmap leaf at a time, which is one write of 512 bytes when the map
// isn't mapped, rather than one per chunk.
func (l *live) fill(alloc *bitmap, chunks uint64) error {
	nbytes := (chunks + 7) / 8
	buf := make([]byte, leafWords*8)
	for _, k := range alloc.leafKeys() {
		// Chunk c is bit c%8 of byte c/8: the little-endian bytes of
		// the leaf's words, in order.
		for w, word := range alloc.leaves[k] {
			binary.LittleEndian.PutUint64(buf[w*8:], word)
		}
		off := k * uint64(len(buf))
		b := buf[:min(uint64(len(buf)), nbytes-off)]
		if l.bits != nil {
			copy(l.bits[off:], b)
			continue
		}
		if _, err := l.f.WriteAt(b, liveBitsOff+int64(off)); err != nil {
			return fmt.Errorf("writing live map: %w", err)
		}
	}
	return nil
}

// back gives every block of the live map disk space and then, where that
// guarantees that a store through a shared mapping can't fault, maps the
// bits; otherwise updates are written through the file (and tests'
// in-memory filesystem never maps).
//
// A store to a mapped page the filesystem can't find space for raises
// SIGBUS, and the Go runtime dies of it: the whole server, every session,
// for a TRIM on a full disk. Allocating up front turns that into an open
// that fails with ENOSPC. It is enough only where the filesystem writes
// allocated blocks in place (ext4, XFS, tmpfs); copy-on-write filesystems
// (btrfs, ZFS, bcachefs) need new space for every write back, and on them
// and on filesystems not known here, as where fallocate isn't supported,
// a write through the file fails cleanly instead.
func (l *live) back(size int64) error {
	a, ok := l.f.(allocator)
	if !ok {
		return nil
	}
	if err := a.Allocate(0, size); err != nil {
		if unsupported(err) {
			return nil
		}
		return fmt.Errorf("allocating live map: %w", err)
	}
	fd, ok := l.f.(interface{ Fd() uintptr })
	if !ok || size <= liveBitsOff {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(fd.Fd()), &st); err != nil {
		return nil
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.TMPFS_MAGIC:
	default:
		return nil
	}
	b, err := unix.Mmap(int(fd.Fd()), liveBitsOff, int(size-liveBitsOff), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err == nil {
		l.bits = b
	}
	return nil
}

// read returns the chunks the live map holds.
func (l *live) read(chunks uint64) (*bitmap, error) {
	bits := l.bits
	if bits == nil {
		bits = make([]byte, (chunks+7)/8)
		if _, err := l.f.ReadAt(bits, liveBitsOff); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("reading live map: %w", err)
		}
	}
	m := newBitmap()
	for i, v := range bits {
		for v != 0 {
			j := uint64(i)*8 + uint64(trailingZeros8(v))
			if j < chunks {
				m.set(j, true)
			}
			v &= v - 1
		}
	}
	return m, nil
}

func trailingZeros8(v byte) int {
	n := 0
	for v&1 == 0 {
		v >>= 1
		n++
	}
	return n
}

// update copies the state of chunks [first, last] from alloc into the
// live map. The caller holds the lock that guards alloc.
func (l *live) update(first, last uint64, alloc *bitmap) error {
	lo, hi := first/8, last/8
	if l.bits != nil {
		for i := lo; i <= hi; i++ {
			l.bits[i] = liveByte(alloc, i)
		}
		return nil
	}
	b := make([]byte, hi-lo+1)
	for i := lo; i <= hi; i++ {
		b[i-lo] = liveByte(alloc, i)
	}
	if _, err := l.f.WriteAt(b, liveBitsOff+int64(lo)); err != nil {
		return fmt.Errorf("writing live map: %w", err)
	}
	return nil
}

func liveByte(alloc *bitmap, i uint64) byte {
	var v byte
	for k := range uint64(8) {
		if alloc.get(i*8 + k) {
			v |= 1 << k
		}
	}
	return v
}

func (l *live) close() error {
	if l.bits != nil {
		unix.Munmap(l.bits)
		l.bits = nil
	}
	return l.f.Close()
}

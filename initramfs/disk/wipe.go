package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"
)

// WipeMethod says how Wipe destroyed the bulk of a disk.
type WipeMethod string

// The wipe methods, in the order Wipe tries them.
const (
	// SecureDiscard is BLKSECDISCARD: the device erases the blocks and
	// their copies (eMMC secure trim/erase). Reads afterwards may return
	// zeroes or ones.
	SecureDiscard WipeMethod = "secure-discard"
	// Discard is BLKDISCARD followed by a sample read that came back all
	// zeroes (virtio-blk with discard, NVMe, SATA SSDs with deterministic
	// read-zeroes after TRIM).
	Discard WipeMethod = "discard"
	// DiscardZeroOut is BLKDISCARD whose sample read back something other
	// than zeroes (the device doesn't guarantee zeroes after a discard),
	// followed by BLKZEROOUT of the whole disk.
	DiscardZeroOut WipeMethod = "discard+zeroout"
	// ZeroOut is BLKZEROOUT of the whole disk, for devices without
	// discard: the kernel uses the device's WRITE ZEROES command when it
	// has one and writes zeroes itself otherwise.
	ZeroOut WipeMethod = "zeroout"
	// PunchHole is for regular files (disk images): fallocate with
	// FALLOC_FL_PUNCH_HOLE deallocates the whole file, which then reads as
	// zeroes, as a discard does on a thin-provisioned disk.
	PunchHole WipeMethod = "punch-hole"
	// Overwrite is writing zeroes over the whole disk with write(2), when
	// nothing above worked.
	Overwrite WipeMethod = "overwrite"
)

const (
	// wipeChunk is how much one discard, zero-out or punch-hole call
	// covers, so that a cancelled context is noticed within one chunk.
	wipeChunk = 1 << 30
	// writeChunk is the buffer for writing zeroes.
	writeChunk = 4 << 20
	// sampleBlocks is how many pageBytes blocks are read back after a
	// discard: one at each end and the rest spread at random across the
	// disk (1 MiB in all).
	sampleBlocks = 256
)

// WipeResult says what Wipe did.
type WipeResult struct {
	Method WipeMethod
	// Size is the disk's size in bytes.
	Size int64
	// ZeroFilled is true when every byte of the disk now reads back as
	// zero by the method's own guarantee (ZeroOut, DiscardZeroOut,
	// PunchHole, Overwrite), not just by sampling. Pass it on as
	// BuildOptions.Prezeroed.
	ZeroFilled bool
	// SampleZero is true when every block of a sample read back as zero
	// after the wipe (checked whatever the method).
	SampleZero bool
	// Found lists what the old layout had (partition tables, filesystems
	// and their backup superblocks, LVM, mdraid, btrfs, swap), for the log.
	Found []string
	// Zeroed is how many bytes of signature areas were overwritten with
	// zeroes after the bulk wipe.
	Zeroed int64
	// Duration is the wall time of the whole wipe.
	Duration time.Duration
}

// Wipe destroys everything on the disk (or disk image) at path, so that
// neither data nor any signature blkid or wipefs would find survives.
//
// It first reads the old layout (GPT and MBR partitions; in the disk and in
// every old partition the ext2/3/4 and XFS superblocks, whose backups it
// locates), then destroys the bulk of the disk with the first of these that
// works: BLKSECDISCARD, BLKDISCARD (then a sample is read back; if it isn't
// all zeroes, BLKZEROOUT follows), BLKZEROOUT, and writing zeroes. An image
// file has its whole range punched out with fallocate instead, or zeroes
// written. Whatever the method, it then overwrites with zeroes the first
// and last MiB of the disk and of every old partition (partition tables,
// LVM, mdraid, LUKS, swap, the primary ext/XFS/btrfs superblocks), the
// btrfs superblock mirrors, and every backup superblock it located, and
// syncs.
//
// A block device is opened with O_EXCL, so Wipe fails with EBUSY if the
// disk or any partition of it is mounted or otherwise in use. Wipe doesn't
// re-read the partition table; [Build] does.
func Wipe(ctx context.Context, path string, opts WipeOptions) (WipeResult, error) {
	return wipe(ctx, path, allMethods, opts)
}

// WipeOptions tune Wipe; the zero value is the default.
type WipeOptions struct {
	// Progress, if set, is called as the bulk of the disk is destroyed:
	// after every wipeChunk bytes (1 GiB) of a method, with the bytes it
	// has covered so far out of size. A method that fails part way is
	// followed by the next one from zero. On a disk without discard,
	// zeroing can take hours; this is how the caller can show it.
	Progress func(m WipeMethod, done, size int64)
}

// methodSet selects the methods wipe may use; tests force the fallbacks.
type methodSet uint8

const (
	useSecureDiscard methodSet = 1 << iota
	useDiscard
	useZeroOut
	usePunchHole
	allMethods methodSet = 0xff
)

func wipe(ctx context.Context, path string, methods methodSet, opts WipeOptions) (WipeResult, error) {
	start := time.Now()
	d, err := openDisk(path)
	if err != nil {
		return WipeResult{}, err
	}
	defer d.f.Close()
	res := WipeResult{Size: d.size}
	sectorSize := d.sectorSize
	if !d.block {
		sectorSize = 0 // an image: try both GPT sector sizes
	}
	old, err := scan(d.f, d.size, sectorSize)
	if err != nil {
		return res, fmt.Errorf("reading old layout of %s: %w", path, err)
	}
	res.Found = old.Found

	res.Method, res.ZeroFilled, err = wipeBulk(ctx, d, methods, opts.Progress)
	if err != nil {
		return res, fmt.Errorf("wiping %s: %w", path, err)
	}
	if res.Zeroed, err = zeroRegions(ctx, d.f, old.Regions); err != nil {
		return res, fmt.Errorf("zeroing signatures of %s: %w", path, err)
	}
	if err := d.f.Sync(); err != nil {
		return res, fmt.Errorf("syncing %s: %w", path, err)
	}
	// After a discard the sample has just read back zeroes, and only
	// zeroes were written since: don't pay for a second sample (it is a
	// fifth of the whole wipe under TCG).
	res.SampleZero = res.Method == Discard
	if !res.SampleZero {
		if res.SampleZero, err = sampleZero(d.f, d.size); err != nil {
			return res, fmt.Errorf("reading back %s: %w", path, err)
		}
	}
	res.Duration = time.Since(start)
	return res, nil
}

// wipeBulk destroys the whole disk with the first method that works.
func wipeBulk(ctx context.Context, d *openedDisk, methods methodSet, progress func(WipeMethod, int64, int64)) (WipeMethod, bool, error) {
	var errs []error
	// run covers the disk with op chunk by chunk, reporting progress.
	run := func(m WipeMethod, op func(off, n int64) error) error {
		return chunked(ctx, d.size, func(off, n int64) error {
			if err := op(off, n); err != nil {
				return err
			}
			if progress != nil {
				progress(m, off+n, d.size)
			}
			return nil
		})
	}
	try := func(m WipeMethod, op func(*os.File, int64, int64) error) bool {
		err := run(m, func(off, n int64) error { return op(d.f, off, n) })
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m, err))
		}
		return err == nil
	}
	if d.block {
		if methods&useSecureDiscard != 0 && try(SecureDiscard, secureDiscard) {
			return SecureDiscard, false, nil
		}
		if methods&useDiscard != 0 && try(Discard, discard) {
			zero, err := sampleZero(d.f, d.size)
			if err != nil {
				return "", false, fmt.Errorf("reading back after discard: %w", err)
			}
			if zero {
				return Discard, false, nil
			}
			if try(DiscardZeroOut, zeroOut) {
				return DiscardZeroOut, true, nil
			}
		}
		if methods&useZeroOut != 0 && try(ZeroOut, zeroOut) {
			return ZeroOut, true, nil
		}
	} else if methods&usePunchHole != 0 && try(PunchHole, punchHole) {
		return PunchHole, true, nil
	}
	if err := ctx.Err(); err != nil {
		return "", false, err
	}
	if err := run(Overwrite, func(off, n int64) error { return writeZeroes(ctx, d.f, off, n) }); err != nil {
		return "", false, errors.Join(append(errs, fmt.Errorf("%s: %w", Overwrite, err))...)
	}
	return Overwrite, true, nil
}

// zeroRegions writes zeroes over regs and returns how many bytes it wrote.
func zeroRegions(ctx context.Context, w io.WriterAt, regs []region) (int64, error) {
	var n int64
	for _, g := range regs {
		if err := writeZeroes(ctx, w, g.Off, g.Len); err != nil {
			return n, err
		}
		n += g.Len
	}
	return n, nil
}

// chunked calls op over [0, size) in chunks of wipeChunk, checking ctx
// between chunks.
func chunked(ctx context.Context, size int64, op func(off, n int64) error) error {
	for off := int64(0); off < size; off += wipeChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := op(off, min(wipeChunk, size-off)); err != nil {
			return fmt.Errorf("at %d: %w", off, err)
		}
	}
	return nil
}

// writeZeroes writes zeroes over [off, off+n) with write(2).
func writeZeroes(ctx context.Context, w io.WriterAt, off, n int64) error {
	buf := make([]byte, min(n, writeChunk))
	for end := off + n; off < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := min(int64(len(buf)), end-off)
		if _, err := w.WriteAt(buf[:k], off); err != nil {
			return err
		}
		off += k
	}
	return nil
}

// sampleZero reads sampleBlocks blocks of pageBytes (the first, the last,
// and one at a random place in each of the equal stretches in between) and
// reports whether they are all zero.
func sampleZero(r io.ReaderAt, size int64) (bool, error) {
	if size < pageBytes {
		buf := make([]byte, size)
		if _, err := r.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
			return false, err
		}
		return allZero(buf), nil
	}
	blocks := size / pageBytes
	offs := []int64{0, (blocks - 1) * pageBytes}
	stretch := max(1, blocks/(sampleBlocks-2))
	for b := int64(0); b < blocks && len(offs) < sampleBlocks; b += stretch {
		offs = append(offs, (b+rand.Int64N(min(stretch, blocks-b)))*pageBytes)
	}
	buf := make([]byte, pageBytes)
	for _, off := range offs {
		if _, err := r.ReadAt(buf, off); err != nil {
			return false, fmt.Errorf("at %d: %w", off, err)
		}
		if !allZero(buf) {
			return false, nil
		}
	}
	return true, nil
}

// openedDisk is a disk or disk image opened for writing.
type openedDisk struct {
	f          *os.File
	block      bool // a block device, not a regular file
	size       int64
	sectorSize int
}

// openDisk opens path for writing: a block device exclusively, with its
// size and logical sector size from the kernel; a regular file with its
// size and 512-byte sectors.
func openDisk(path string) (*openedDisk, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	d := &openedDisk{sectorSize: 512}
	switch {
	case fi.Mode().IsRegular():
		if d.f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
			return nil, err
		}
		d.size = fi.Size()
		return d, nil
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		d.block = true
		if d.f, err = openExclusive(path); err != nil {
			return nil, fmt.Errorf("opening %s exclusively (is it mounted or in use?): %w", path, err)
		}
		if d.size, err = blockSize(d.f); err != nil {
			d.f.Close()
			return nil, fmt.Errorf("getting size of %s: %w", path, err)
		}
		if d.sectorSize, err = logicalSectorSize(d.f); err != nil {
			d.f.Close()
			return nil, fmt.Errorf("getting sector size of %s: %w", path, err)
		}
		return d, nil
	}
	return nil, fmt.Errorf("%s is neither a block device nor a regular file (%v)", path, fi.Mode().Type())
}

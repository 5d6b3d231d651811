package disk

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The block-device ioctls are issued by hand rather than through
// unix.IoctlGetInt: BLKGETSIZE64 writes a 64-bit value whatever the
// architecture, and a Go int is 32 bits on GOARCH=arm, so IoctlGetInt would
// truncate the size and write past the variable there.

func ioctlPtr(f *os.File, req uint, p unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(p))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// blockSize returns a block device's size in bytes (BLKGETSIZE64).
func blockSize(f *os.File) (int64, error) {
	var n uint64
	if err := ioctlPtr(f, unix.BLKGETSIZE64, unsafe.Pointer(&n)); err != nil {
		return 0, err
	}
	return int64(n), nil
}

// logicalSectorSize returns a block device's logical sector size (BLKSSZGET).
func logicalSectorSize(f *os.File) (int, error) {
	var n int32
	if err := ioctlPtr(f, unix.BLKSSZGET, unsafe.Pointer(&n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// rangeIoctl issues BLKDISCARD, BLKSECDISCARD or BLKZEROOUT over
// [off, off+n).
func rangeIoctl(f *os.File, req uint, off, n int64) error {
	r := [2]uint64{uint64(off), uint64(n)}
	return ioctlPtr(f, req, unsafe.Pointer(&r))
}

func discard(f *os.File, off, n int64) error       { return rangeIoctl(f, unix.BLKDISCARD, off, n) }
func secureDiscard(f *os.File, off, n int64) error { return rangeIoctl(f, unix.BLKSECDISCARD, off, n) }
func zeroOut(f *os.File, off, n int64) error       { return rangeIoctl(f, unix.BLKZEROOUT, off, n) }

// rereadPartitions asks the kernel to re-read the partition table (BLKRRPART).
func rereadPartitions(f *os.File) error {
	return ioctlPtr(f, unix.BLKRRPART, nil)
}

// punchHole deallocates [off, off+n) of a regular file, keeping its size:
// the file-system equivalent of a discard that guarantees zeroes.
func punchHole(f *os.File, off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// openExclusive opens a block device for writing with O_EXCL, which the
// kernel refuses (EBUSY) while the device or any of its partitions is
// mounted, used by device-mapper or md, or opened exclusively by anyone else.
func openExclusive(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
}

// addPartition tells the kernel about partition pno at [start,
// start+length) bytes (BLKPG_ADD_PARTITION), whether or not it can parse
// the partition table itself. It fails with EBUSY if the partition exists
// or overlaps one.
func addPartition(f *os.File, pno int, start, length int64) error {
	p := unix.BlkpgPartition{Start: start, Length: length, Pno: int32(pno)}
	a := unix.BlkpgIoctlArg{
		Op:      unix.BLKPG_ADD_PARTITION,
		Datalen: int32(unsafe.Sizeof(p)),
		Data:    (*byte)(unsafe.Pointer(&p)),
	}
	return ioctlPtr(f, unix.BLKPG, unsafe.Pointer(&a))
}

package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
)

// Defaults for BuildOptions.
const (
	// DefaultLabel is the ext4 label and the GPT partition name.
	DefaultLabel = "rackboot-build"
	// DefaultMke2fs is the mke2fs program, looked up in PATH.
	DefaultMke2fs = "mke2fs"
	// DefaultInodeRatio is the bytes of disk per inode: mke2fs's own
	// default, 4 Mi inodes on 64 GiB. With lazy inode-table initialisation
	// it costs no time at mkfs; fewer inodes risk running out in builds
	// with many small files.
	DefaultInodeRatio = 16384
	// DefaultPartitionWait is how long Build waits for the partition's
	// device node to appear after re-reading the partition table.
	DefaultPartitionWait = 5 * time.Second
)

// Features are the ext4 features Build enables: Debian 12's mke2fs
// defaults for ext4 minus resize_inode (the filesystem is never grown),
// all supported by Linux 4.x and later. metadata_csum needs the crc32c
// module (crc32c_generic, or crc32c-intel on x86) loaded before mounting.
const Features = "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize," +
	"sparse_super,large_file,filetype,dir_index,ext_attr"

// fsBlockSize is the ext4 block size Build uses.
const fsBlockSize = 4096

// BuildOptions configures Build. The zero value is ready to use.
type BuildOptions struct {
	// Label is the ext4 label and GPT partition name; empty means
	// DefaultLabel. At most 16 bytes.
	Label string
	// Mke2fs is the mke2fs program (a path, or a name looked up in PATH);
	// empty means DefaultMke2fs. It must be e2fsprogs 1.47 or later when
	// Prezeroed is set.
	Mke2fs string
	// InodeRatio is the bytes of disk per inode; 0 means DefaultInodeRatio.
	InodeRatio int
	// Prezeroed says the whole disk reads as zeroes (WipeResult.ZeroFilled):
	// mke2fs then marks the inode tables as zeroed, so the kernel doesn't
	// zero them in the background after the first mount.
	Prezeroed bool
	// SectorSize is the logical sector size the GPT uses when the target
	// is a regular file; 0 means 512. A block device always uses its own.
	SectorSize int
	// PartitionWait is how long to wait for the partition's device node;
	// 0 means DefaultPartitionWait.
	PartitionWait time.Duration
}

// Result describes the partition and filesystem Build made.
type Result struct {
	// Partition is the partition's device node (/dev/vda1,
	// /dev/nvme0n1p1, /dev/mmcblk0p1), or "" when the target was a
	// regular file: then use Offset and Size.
	Partition string
	// Offset and Size are the partition's (and filesystem's) position
	// and length in bytes within the disk.
	Offset, Size int64
	// SectorSize is the logical sector size of the GPT.
	SectorSize int
	// PartUUID is the GPT partition's unique GUID, as blkid's PARTUUID.
	PartUUID string
	// UUID is the filesystem UUID.
	UUID string
	// Label is the filesystem label and partition name.
	Label string
	// Duration is the wall time of the whole build.
	Duration time.Duration
}

// Build writes a fresh GPT on the disk (or disk image) at path with one
// partition of type "Linux filesystem" spanning the disk from 1 MiB to the
// last whole MiB, and makes an ext4 filesystem with a journal in it with
// mke2fs (inode tables and journal initialised lazily).
//
// For a block device it then has the kernel re-read the partition table
// and waits for the partition's device node, which it names from path as
// the kernel does (vda → vda1, nvme0n1 → nvme0n1p1, mmcblk0 → mmcblk0p1),
// in path's directory, and runs mke2fs on that node. For a regular file it
// runs mke2fs at the partition's offset inside the file, and
// Result.Partition is empty.
//
// Build doesn't wipe: call [Wipe] first. It holds the block device open
// exclusively while writing the table, so it fails with EBUSY if the disk
// or a partition of it is in use.
func Build(ctx context.Context, path string, opts BuildOptions) (Result, error) {
	start := time.Now()
	label := opts.Label
	if label == "" {
		label = DefaultLabel
	}
	if len(label) > 16 {
		return Result{}, fmt.Errorf("label %q is longer than 16 bytes", label)
	}
	mke2fs := opts.Mke2fs
	if mke2fs == "" {
		mke2fs = DefaultMke2fs
	}
	mke2fs, err := exec.LookPath(mke2fs)
	if err != nil {
		return Result{}, fmt.Errorf("finding mke2fs: %w", err)
	}

	d, err := openDisk(path)
	if err != nil {
		return Result{}, err
	}
	defer d.f.Close()
	if !d.block && opts.SectorSize != 0 {
		d.sectorSize = opts.SectorSize
	}
	l, err := planGPT(d.size, d.sectorSize)
	if err != nil {
		return Result{}, fmt.Errorf("partitioning %s: %w", path, err)
	}
	partGUID, fsUUID := randomGUID(), randomGUID()
	res := Result{
		Offset:     l.PartOffset(),
		Size:       l.PartSize(),
		SectorSize: d.sectorSize,
		PartUUID:   partGUID.String(),
		// An ext4 UUID is stored in RFC 4122 byte order, unlike a GPT
		// GUID; both are random, so only the text matters.
		UUID:  fsUUID.String(),
		Label: label,
	}
	// Clear the old table areas (Wipe did, but Build must not depend on
	// it) and write the new table.
	if err := writeZeroes(ctx, d.f, 0, min(edgeBytes, d.size)); err != nil {
		return res, fmt.Errorf("clearing start of %s: %w", path, err)
	}
	if err := writeZeroes(ctx, d.f, max(0, d.size-edgeBytes), min(edgeBytes, d.size)); err != nil {
		return res, fmt.Errorf("clearing end of %s: %w", path, err)
	}
	if err := writeGPT(d.f, l, randomGUID(), partGUID, linuxFilesystemType, label); err != nil {
		return res, fmt.Errorf("partitioning %s: %w", path, err)
	}
	if err := d.f.Sync(); err != nil {
		return res, fmt.Errorf("syncing %s: %w", path, err)
	}

	target := path
	if d.block {
		if err := announcePartition(ctx, d.f, path, res); err != nil {
			return res, err
		}
		// mke2fs opens the partition exclusively, which the kernel refuses
		// while the whole disk is held exclusively.
		d.f.Close()
		wait := opts.PartitionWait
		if wait == 0 {
			wait = DefaultPartitionWait
		}
		if target, err = waitPartition(ctx, path, res.Size, wait); err != nil {
			return res, err
		}
		res.Partition = target
	}
	if err := runMke2fs(ctx, mke2fs, target, res, opts); err != nil {
		return res, err
	}
	res.Duration = time.Since(start)
	return res, nil
}

// announcePartition makes the kernel drop the disk's old partitions and
// know the new one. BLKRRPART does both where the kernel parses GPTs
// (CONFIG_EFI_PARTITION, in every distribution kernel); where it doesn't,
// or the re-read failed, BLKPG adds the partition directly. BLKPG's EBUSY
// means the re-read already made it.
func announcePartition(ctx context.Context, f *os.File, path string, res Result) error {
	rrErr := reread(ctx, f)
	if err := ctx.Err(); err != nil {
		return err
	}
	part, err := PartitionPath(path, 1)
	if err != nil {
		return err
	}
	if n, err := nodeSize(part); err == nil && n == res.Size {
		return nil
	}
	if err := addPartition(f, 1, res.Offset, res.Size); err != nil && !isBusy(err) {
		return fmt.Errorf("telling the kernel about partition 1 of %s: %w", path,
			errors.Join(fmt.Errorf("re-reading the partition table: %w", rrErr), fmt.Errorf("adding the partition: %w", err)))
	}
	return nil
}

// reread has the kernel re-read the partition table, retrying while it is
// busy (udev or blkid may have a partition open for a moment).
func reread(ctx context.Context, f *os.File) error {
	var err error
	for range 20 {
		if err = rereadPartitions(f); err == nil || !isBusy(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return err
}

// PartitionPath returns the device node of partition n of the disk at
// path, named as the kernel names it: a "p" goes between a disk name that
// ends in a digit and the partition number (nvme0n1p1, mmcblk0p1,
// loop0p1, nbd0p1), but not otherwise (vda1, sda1). Symbolic links in
// path (such as /dev/disk/by-id names) are resolved first.
func PartitionPath(path string, n int) (string, error) {
	p, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", err
	}
	base := filepath.Base(p)
	sep := ""
	if base != "" && unicode.IsDigit(rune(base[len(base)-1])) {
		sep = "p"
	}
	return filepath.Join(filepath.Dir(p), base+sep+strconv.Itoa(n)), nil
}

// waitPartition waits until partition 1 of the disk at path has a block
// device node of the expected size, and returns its path.
func waitPartition(ctx context.Context, path string, size int64, wait time.Duration) (string, error) {
	part, err := PartitionPath(path, 1)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		got, err := nodeSize(part)
		if err == nil && got == size {
			return part, nil
		}
		if err == nil {
			err = fmt.Errorf("size %d, want %d", got, size)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for partition %s: %w (last: %w)", part, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func nodeSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return blockSize(f)
}

// runMke2fs makes the filesystem. It doesn't depend on any mke2fs.conf:
// MKE2FS_CONFIG points at an empty file and every setting is explicit.
func runMke2fs(ctx context.Context, mke2fs, target string, res Result, opts BuildOptions) error {
	ratio := opts.InodeRatio
	if ratio == 0 {
		ratio = DefaultInodeRatio
	}
	ext := []string{"lazy_itable_init=1", "lazy_journal_init=1", "nodiscard"}
	if opts.Prezeroed {
		ext = append(ext, "assume_storage_prezeroed=1")
	}
	args := []string{
		"-q", "-F",
		"-b", strconv.Itoa(fsBlockSize),
		"-I", "256",
		"-i", strconv.Itoa(ratio),
		"-m", "0", // builds run as root: a root reserve only hides space
		"-L", res.Label,
		"-U", res.UUID,
		"-O", "none," + Features,
	}
	blocks := ""
	if res.Partition == "" {
		ext = append(ext, "offset="+strconv.FormatInt(res.Offset, 10))
		blocks = strconv.FormatInt(res.Size/fsBlockSize, 10)
	}
	args = append(args, "-E", strings.Join(ext, ","), target)
	if blocks != "" {
		args = append(args, blocks)
	}
	cmd := exec.CommandContext(ctx, mke2fs, args...)
	cmd.Env = append(os.Environ(), "MKE2FS_CONFIG="+os.DevNull)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("running %s %s: %w: %s", mke2fs, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

func isBusy(err error) bool { return errors.Is(err, syscall.EBUSY) }

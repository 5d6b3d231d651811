// Package disk finds a board's build disk, wipes it and rebuilds it with a
// fresh GPT and ext4 filesystem, so that nothing a build wrote in one boot
// survives into the next.
//
// The initramfs's init calls, on every boot:
//
//	disks, _ := disk.List("/sys", "/dev")
//	mounted, _ := disk.Mounted("/sys", "/proc/self/mountinfo")
//	d, err := disk.Select(disks, selector, append(mounted, rootDev)...)
//	wiped, _ := disk.Wipe(ctx, d.Path, disk.WipeOptions{})
//	res, _ := disk.Build(ctx, d.Path, disk.BuildOptions{Prezeroed: wiped.ZeroFilled})
//	// mount res.Partition (ext4, label res.Label, UUID res.UUID)
//
// All functions are safe for concurrent use on different disks; nothing
// here keeps state between calls. Only Wipe and Build write, and only to
// the path they are given.
//
// # Selecting
//
// List reads /sys/block and /dev/disk/by-id and by-path. It leaves out
// what is never a build disk (loop, ram, zram, nbd, sr, dm, md, MTD, and
// the eMMC boot/RPMB/GP areas). Select's "largest" also skips removable,
// read-only and held (dm/md) disks and everything excluded; explicit
// selectors (by-id, by-path, serial) may pick a removable disk but never
// an excluded, read-only or held one. Every error lists each disk
// considered and why it was passed over; when the disk named (or, for
// "largest", a candidate) is there but read-only or held, the error wraps
// ErrUnwipeable rather than ErrNoMatch: it may keep an earlier build's
// data, and the boot must fail rather than go on without a disk.
//
// The initramfs has no udev, so /dev/disk/by-id is missing there: List
// then derives the names udev would give virtio (virtio-SERIAL), NVMe
// (nvme-MODEL_SERIAL) and MMC (mmc-NAME_SERIAL) disks. USB and SATA
// by-id names and every by-path name need udev (or links the init makes).
//
// # Wiping
//
// Wipe first reads the old layout: GPT (both copies, 512- and 4096-byte
// sectors) and MBR partitions, and in the disk and every old partition the
// ext2/3/4 superblock (whose block size, blocks per group and
// sparse_super/sparse_super2 flags locate the backups) and the XFS
// superblock (whose allocation groups hold secondaries). Then it destroys
// the whole disk with the first method that works: BLKSECDISCARD; BLKDISCARD
// followed by a read-back of 256 blocks spread at random, and BLKZEROOUT of
// the whole disk if any isn't zero; BLKZEROOUT; writing zeroes. An image
// file is punched out with fallocate(PUNCH_HOLE), the file-system analogue
// of a discard that guarantees zeroes. Whatever the method, it then writes
// zeroes over the first and last MiB of the disk and of every old partition
// (MBR, both GPTs, LVM label and metadata, mdraid 0.90/1.x, LUKS, bcache,
// swap, ZFS labels, primary ext/XFS/btrfs superblocks), the btrfs mirrors
// at 64 MiB and 256 GiB, and every ext backup and XFS secondary superblock
// found (at most 8192 per filesystem), then syncs. The tests check that
// blkid and wipefs then find nothing on the disk or at any old partition's
// offset, that dumpe2fs can use no backup superblock, and that a marker
// written into an ext4 file and raw at the start, middle and end is gone.
//
// # Building
//
// Build writes a protective MBR and a GPT (in the disk's logical sector
// size) with one "Linux filesystem" partition named rackboot-build from
// 1 MiB to the last whole MiB, has the kernel re-read the table (BLKRRPART;
// BLKPG adds the partition where the kernel has no GPT parser), and runs
// mke2fs on the partition with every setting explicit and no mke2fs.conf:
// 4 KiB blocks, 256-byte inodes, one inode per 16 KiB, no root reserve, a
// journal, the features in [Features], and lazy inode-table and journal
// initialisation (plus assume_storage_prezeroed after a wipe that
// guarantees zeroes, so the kernel has no inode tables to zero after
// mounting either). On an image file it runs mke2fs at the partition's
// offset instead.
//
// # ext4: go-diskfs or mke2fs
//
// Measured on this project's development machine (2 vCPUs of an Intel Xeon
// VM without usable KVM, Debian 12, host kernel 6.18, sparse image files on
// its ext4 disk; a shared, noisy machine, so ranges):
//
//	                                            8 GiB          64 GiB
//	go-diskfs v1.9.4 GPT+ext4.Create,
//	  inode ratio 1 MiB                      0.36-1.9 s      1.9-5.8 s (1.8 s CPU), 149 MB written
//	  inode ratio 256 KiB / 64 KiB                -          2.2 s, 197 MB / 3.4 s, 389 MB
//	mke2fs 1.47.0, lazy_itable_init and
//	  lazy_journal_init, ratio 16 KiB        0.07-0.85 s     0.10-0.26 s, 4.7 MB written
//	this package (BenchmarkWipeBuild,
//	  -count 5): Wipe+Build                  58-124 ms       52-182 ms
//	  Wipe / Build alone                     23-51 / 8-11 ms 30-52 / 10-14 ms
//
// and under TCG (qemu-system-x86_64 7.2 -accel tcg -cpu max -smp 1,
// Debian's 6.1.0-56 kernel, virtio-blk on a sparse raw file with
// discard=unmap), Wipe+Build of the 64 GiB disk took 0.51-1.16 s in 10 runs
// (Wipe 0.32-0.81 s, Build 0.18-0.46 s; one earlier run took 9.9 s in a
// host I/O stall), 8 GiB 0.58-1.53 s. Inside Wipe: BLKDISCARD of 64 GiB
// 30-50 ms, the 256-block read-back ~200 ms, writing 4 MiB of signature
// areas 30-310 ms and the fsync 25-250 ms; Build is mostly mke2fs, which
// alone took 135-240 ms (process start and dynamic linking under TCG; it
// writes under 5 MB). go-diskfs's GPT+ext4 on the same 64 GiB disk took
// 29-106 s per run.
//
// go-diskfs loses for two reasons no inode ratio removes: it writes every
// inode table and a zeroed 128 MiB journal (it has no uninit_bg or
// metadata_csum lazy initialisation), and it spends CPU on a fmt.Sprintf
// per padding bit of each inode bitmap (16 Mi calls on 64 GiB), which TCG
// multiplies. It also has a 32-bit ARM bug (BLKGETSIZE64 read into a Go
// int: sizes from 4 GiB up are truncated and 4 bytes past the variable are
// overwritten), and its Disk.CreateFilesystem passes the device's logical
// sector size to ext4.Create, which accepts only 512, so on a 4Kn disk it
// fails ("sectorsize for ext4 must be either 512 bytes or 0"); calling
// ext4.Create directly with 512 would work.
//
// So Build runs mke2fs. Its cost is the initramfs: Debian 12's mke2fs is
// dynamically linked, and with libext2fs.so.2 and libe2p.so.2 (package
// libext2fs2), libcom_err.so.2 (libcom-err2), libblkid.so.1 (libblkid1),
// libuuid.so.1 (libuuid1), libc.so.6 and ld-linux (libc6) it is 3.18 MB,
// 1.42 MB with gzip -9 and 1.14 MB with xz -9 on amd64 (0.46 MB gzipped
// without libc and ld.so, which a pure-Go initramfs doesn't otherwise
// have). For comparison, linking go-diskfs's ext4 and gpt into a Go binary
// adds 240-270 KB gzipped, and this package adds 256-287 KB to a minimal
// Go binary (amd64, arm64, arm), mostly standard library an init links
// anyway. mke2fs must be e2fsprogs 1.47 or later for
// assume_storage_prezeroed (Debian 12 has 1.47.0).
//
// # Caveats
//
//   - After a plain discard, zeroes are checked by sampling only. A device
//     that discards only whole aligned chunks could keep data in a partial
//     chunk at an edge; the signature areas are zeroed regardless. Such a
//     wipe isn't ZeroFilled, so Build leaves inode-table zeroing to the
//     kernel's lazyinit thread after mounting.
//   - BLKSECDISCARD (eMMC secure trim) can take minutes on a large card;
//     an eMMC may read back ones after it, which is fine.
//   - Signatures nested more deeply than a partition (a filesystem in an
//     LVM logical volume) are found only in the regions above; the bulk
//     wipe is what removes them.
//   - A block device is opened with O_EXCL, so Wipe and Build fail with
//     EBUSY while the disk or any of its partitions is mounted, in use by
//     dm or md, or held by anyone else.
//   - 4Kn disks work: the GPT is written in 4096-byte sectors, mke2fs uses
//     the device's sizes, and sampling and signature writes are 4 KiB
//     aligned (tested on a loop device with 4096-byte sectors).
//   - metadata_csum needs the crc32c module loaded before the board's
//     kernel mounts the filesystem.
//
// # Tests
//
// The tests need sgdisk (package gdisk), mke2fs, e2fsck, debugfs and
// dumpe2fs (e2fsprogs), and blkid, wipefs and losetup (util-linux); they
// skip without them unless RACKBOOT_REQUIRE_TOOLS=1. TestWipeLoop and
// TestBuildLoop also need root and a free loop device. FuzzScan wants
// -fuzzminimizetime of a few seconds: minimising its inputs is slow.
package disk

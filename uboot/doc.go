// Package uboot builds U-Boot legacy script images, the boot.scr.uimg that
// U-Boot's distro boot fetches and runs with its source command: what
// `mkimage -A arm -O linux -T script -C none -n NAME -d script.txt` writes,
// byte for byte.
//
// # Format
//
// A legacy image (U-Boot include/image.h, struct legacy_img_hdr) is a
// 64-byte big-endian header followed by the data:
//
//	0  magic 0x27051956        4  header CRC-32 (with this field zero)
//	8  time, Unix seconds     12  data size
//	16 load address           20  entry point
//	24 data CRC-32            28  OS, arch, type, compression (1 byte each)
//	32 name, 32 bytes, NUL-padded, not necessarily NUL-terminated
//
// CRCs are the zlib/IEEE CRC-32. A script image's data is a multi-file
// payload with one file: a table of 32-bit big-endian lengths ended by a
// zero length, then the files, each but the last padded to 4 bytes
// (tools/mkimage.c). For one script that is its length, a zero, and the
// script, unpadded.
//
// # Caveats
//
// mkimage refuses an empty script, and U-Boot's source command refuses an
// image whose first length is zero; [Script] still encodes one. U-Boot does
// not check the architecture of script images, so arm (2) serves arm64
// boards too.
package uboot

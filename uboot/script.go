package uboot

import (
	"encoding/binary"
	"hash/crc32"
	"time"
)

// Legacy image header values (U-Boot include/image.h).
const (
	headerSize = 64
	nameLen    = 32 // IH_NMLEN
	magic      = 0x27051956

	osLinux    = 5 // IH_OS_LINUX
	archARM    = 2 // IH_ARCH_ARM; IH_ARCH_ARM64 is 22
	typeScript = 6 // IH_TYPE_SCRIPT
	compNone   = 0 // IH_COMP_NONE
)

// Script returns a U-Boot legacy script image of text named name, created
// at t: exactly what mkimage -A arm -O linux -T script -C none -n name
// writes for a file holding text when SOURCE_DATE_EPOCH is t's Unix time.
// The result depends only on its arguments.
//
// Like mkimage, it keeps the first 32 bytes of name, and stores t as an
// unsigned 32-bit count of seconds (dates from 1970 to 2106). Load address
// and entry point are 0, which the source command ignores for scripts.
func Script(name, text string, t time.Time) []byte {
	img := make([]byte, headerSize, headerSize+8+len(text))
	img = binary.BigEndian.AppendUint32(img, uint32(len(text)))
	img = binary.BigEndian.AppendUint32(img, 0) // end of the length table
	img = append(img, text...)

	h := img[:headerSize]
	binary.BigEndian.PutUint32(h[0:], magic)
	binary.BigEndian.PutUint32(h[8:], uint32(t.Unix()))
	binary.BigEndian.PutUint32(h[12:], uint32(len(img)-headerSize))
	// Load address (16) and entry point (20) stay 0.
	binary.BigEndian.PutUint32(h[24:], crc32.ChecksumIEEE(img[headerSize:]))
	h[28], h[29], h[30], h[31] = osLinux, archARM, typeScript, compNone
	copy(h[32:32+nameLen], name)
	binary.BigEndian.PutUint32(h[4:], crc32.ChecksumIEEE(h)) // with the field still 0
	return img
}

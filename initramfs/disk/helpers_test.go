package disk

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rackboot/rackboot/internal/testenv"
)

// sparseImage creates a sparse file of size bytes in a fresh temporary
// directory and returns its path.
func sparseImage(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// tool runs an external program (skipping or failing t if it is missing,
// see testenv.LookPath) and returns its combined output; a non-zero exit
// fails t.
func tool(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := toolErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// toolErr is tool without failing on a non-zero exit.
func toolErr(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.LookPath(t, name), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// needTools skips (or fails) t unless all the named programs are found.
func needTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		testenv.LookPath(t, n)
	}
}

// uniqueMarker returns a string that occurs nowhere by chance.
func uniqueMarker(t testing.TB) string {
	t.Helper()
	b := make([]byte, 16)
	rand.Read(b)
	return "RACKBOOT-MARKER-" + hex.EncodeToString(b)
}

// writeAt writes b at off in the file at path.
func writeAt(t testing.TB, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// findMarker scans the whole raw file for marker and returns the offsets
// of the first few occurrences. It reads every byte: holes too.
func findMarker(t testing.TB, path, marker string) []int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const chunk = 8 << 20
	m := []byte(marker)
	buf := make([]byte, chunk+len(m))
	var found []int64
	for off := int64(0); ; off += chunk {
		n, err := f.ReadAt(buf, off)
		for i := 0; ; {
			j := bytes.Index(buf[i:n], m)
			if j < 0 {
				break
			}
			found = append(found, off+int64(i+j))
			if len(found) >= 10 {
				return found
			}
			i += j + 1
		}
		if errors.Is(err, io.EOF) || n < len(buf) {
			return found
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// lvmLabel returns an LVM2 physical-volume label sector (sector 1 of the
// device) that blkid recognises: "LABELONE", its sector number, the CRC
// LVM computes (CRC-32 without the final inversion, seeded 0xf597a6cf)
// over the rest of the sector, and a PV header with a UUID.
func lvmLabel() []byte {
	b := make([]byte, 512)
	le := binary.LittleEndian
	copy(b, "LABELONE")
	le.PutUint64(b[8:], 1)
	le.PutUint32(b[20:], 32) // offset of the PV header
	copy(b[24:], "LVM2 001")
	copy(b[32:], "abcdefghijklmnopqrstuvwxyz012345") // PV UUID
	le.PutUint64(b[64:], 64<<20)                     // device size
	le.PutUint32(b[16:], ^crc32.Update(^uint32(0xf597a6cf), crc32.IEEETable, b[20:]))
	return b
}

// mdSuperblock12 returns an mdraid 1.2 superblock (at 4 KiB from the start
// of the member) with a valid checksum, which blkid recognises.
func mdSuperblock12(size int64) []byte {
	const maxDev = 2
	b := make([]byte, 256+2*maxDev)
	le := binary.LittleEndian
	le.PutUint32(b[0:], mdMagic)
	le.PutUint32(b[4:], 1) // major version
	copy(b[16:32], "0123456789abcdef")
	copy(b[32:], "rackboot:0")
	le.PutUint32(b[72:], 1)                     // level: raid1
	le.PutUint64(b[80:], uint64(size/512-2048)) // component size in sectors
	le.PutUint32(b[92:], 2)                     // raid disks
	le.PutUint64(b[128:], 2048)                 // data offset
	le.PutUint64(b[136:], uint64(size/512-2048))
	le.PutUint64(b[144:], 8) // super offset: sector 8 = 4096 bytes
	copy(b[168:184], "fedcba9876543210")
	le.PutUint32(b[220:], maxDev)
	var sum uint64
	for i := 0; i+4 <= len(b); i += 4 {
		sum += uint64(le.Uint32(b[i:]))
	}
	if len(b)%4 != 0 {
		sum += uint64(le.Uint16(b[len(b)-2:]))
	}
	le.PutUint32(b[216:], uint32(sum&0xffffffff+sum>>32))
	return b
}

// probe runs blkid -p on the image at byte offset off and returns its
// output ("" when it finds nothing).
func probe(t testing.TB, path string, off int64) string {
	t.Helper()
	out, err := toolErr(t, "blkid", "-p", "-O", strconv.FormatInt(off, 10), path)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 { // nothing found
		return ""
	}
	if err != nil {
		t.Fatalf("blkid -p -O %d %s: %v\n%s", off, path, err, out)
	}
	return strings.TrimSpace(out)
}

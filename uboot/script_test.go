package uboot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/testenv"
)

var scripts = []struct {
	name, text string
	t          time.Time
}{
	{"rackboot", "pxe get && pxe boot\n", time.Unix(1700000000, 0)},
	{"odd length", "pxe get && pxe boot\n\n", time.Unix(1700000000, 0)},
	{"", "echo no name\n", time.Unix(0, 0)},
	{"exactly thirty-two bytes of name", "echo 32\n", time.Unix(1234567890, 0)},
	{"a name longer than thirty-two bytes is cut like mkimage does", "echo long\n", time.Unix(1234567890, 0)},
	{"multi-line", `setenv bootargs "console=ttyAMA0,115200 root=/dev/nbd0 rw"
setenv serverip 10.0.0.1
tftpboot ${kernel_addr_r} boards/52-54-00-12-34-56/Image
tftpboot ${fdt_addr_r} boards/52-54-00-12-34-56/board.dtb
booti ${kernel_addr_r} - ${fdt_addr_r}
`, time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)},
	{"utf-8 ✓", "echo 'héllo wörld ✓'\r\n", time.Unix(4000000000, 0)},
	{"no newline", "x", time.Unix(1, 0)},
	{"big", strings.Repeat("echo 0123456789abcdef0123456789abcdef\n", 2000), time.Unix(1700000000, 0)},
}

// decode checks the structure of a script image independently of mkimage
// and returns its header fields and script.
func decode(t *testing.T, img []byte) (name string, when uint32, script []byte) {
	t.Helper()
	if len(img) < headerSize+8 {
		t.Fatalf("image of %d bytes", len(img))
	}
	h := bytes.Clone(img[:headerSize])
	be := binary.BigEndian
	if be.Uint32(h) != magic {
		t.Fatalf("magic %#x", be.Uint32(h))
	}
	hcrc := be.Uint32(h[4:])
	be.PutUint32(h[4:], 0)
	if crc32.ChecksumIEEE(h) != hcrc {
		t.Errorf("header CRC %#x; want %#x", hcrc, crc32.ChecksumIEEE(h))
	}
	data := img[headerSize:]
	if n := be.Uint32(h[12:]); int(n) != len(data) {
		t.Errorf("data size %d; want %d", n, len(data))
	}
	if c := be.Uint32(h[24:]); c != crc32.ChecksumIEEE(data) {
		t.Errorf("data CRC %#x; want %#x", c, crc32.ChecksumIEEE(data))
	}
	if got := [4]byte(h[28:32]); got != [4]byte{osLinux, archARM, typeScript, compNone} {
		t.Errorf("os/arch/type/comp % x; want linux arm script none", got)
	}
	if be.Uint32(h[16:]) != 0 || be.Uint32(h[20:]) != 0 {
		t.Errorf("load %#x entry %#x; want 0", be.Uint32(h[16:]), be.Uint32(h[20:]))
	}
	n := be.Uint32(data)
	if be.Uint32(data[4:]) != 0 {
		t.Errorf("length table not ended after one entry: % x", data[:8])
	}
	if int(n) != len(data)-8 {
		t.Fatalf("script length %d; want %d", n, len(data)-8)
	}
	return string(bytes.TrimRight(h[32:], "\x00")), be.Uint32(h[8:]), data[8:]
}

func TestScript(t *testing.T) {
	t.Parallel()
	for _, tt := range scripts {
		t.Run(fmt.Sprintf("%q", tt.name), func(t *testing.T) {
			img := Script(tt.name, tt.text, tt.t)
			name, when, script := decode(t, img)
			wantName := tt.name[:min(len(tt.name), nameLen)]
			if name != wantName || int64(when) != tt.t.Unix() || string(script) != tt.text {
				t.Errorf("decoded %q, %d, %q; want %q, %d, %q", name, when, script, wantName, tt.t.Unix(), tt.text)
			}
			if again := Script(tt.name, tt.text, tt.t); !bytes.Equal(again, img) {
				t.Error("Script is not deterministic")
			}
		})
	}
	// Time zones and sub-second parts don't matter.
	a := Script("x", "y", time.Date(2024, 1, 2, 3, 4, 5, 999, time.FixedZone("X", 3600)))
	b := Script("x", "y", time.Date(2024, 1, 2, 2, 4, 5, 0, time.UTC))
	if !bytes.Equal(a, b) {
		t.Error("Script depends on the zone or nanoseconds of t")
	}
	// mkimage refuses an empty script; ours still has the documented shape.
	if _, _, script := decode(t, Script("empty", "", time.Unix(0, 0))); len(script) != 0 {
		t.Errorf("empty script decoded to %q", script)
	}
}

// TestScriptMatchesMkimage builds each script with mkimage (u-boot-tools)
// and compares the bytes, then checks that dumpimage lists ours.
func TestScriptMatchesMkimage(t *testing.T) {
	t.Parallel()
	mkimage := testenv.LookPath(t, "mkimage")
	dumpimage := testenv.LookPath(t, "dumpimage")
	for _, tt := range scripts {
		t.Run(fmt.Sprintf("%q", tt.name), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			src, want := filepath.Join(dir, "script.txt"), filepath.Join(dir, "want.uimg")
			if err := os.WriteFile(src, []byte(tt.text), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.CommandContext(t.Context(), mkimage, "-A", "arm", "-O", "linux", "-T", "script", "-C", "none",
				"-n", tt.name, "-d", src, want)
			cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", tt.t.Unix()))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("mkimage: %v\n%s", err, out)
			}
			wantImg, err := os.ReadFile(want)
			if err != nil {
				t.Fatal(err)
			}
			got := Script(tt.name, tt.text, tt.t)
			if !bytes.Equal(got, wantImg) {
				i := 0
				for i < min(len(got), len(wantImg)) && got[i] == wantImg[i] {
					i++
				}
				t.Fatalf("Script differs from mkimage at byte %d (lengths %d, %d):\ngot  % x\nwant % x",
					i, len(got), len(wantImg), got[i:min(len(got), i+16)], wantImg[i:min(len(wantImg), i+16)])
			}

			ours := filepath.Join(dir, "ours.uimg")
			if err := os.WriteFile(ours, got, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.CommandContext(t.Context(), dumpimage, "-l", ours).CombinedOutput()
			if err != nil {
				t.Fatalf("dumpimage -l: %v\n%s", err, out)
			}
			for _, want := range []string{
				"Image Name:   " + tt.name[:min(len(tt.name), nameLen)] + "\n",
				"Image Type:   ARM Linux Script (uncompressed)",
				fmt.Sprintf("Image 0: %d Bytes", len(tt.text)),
			} {
				if !strings.Contains(string(out), want) {
					t.Errorf("dumpimage -l output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

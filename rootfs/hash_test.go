package rootfs

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// TestFileSHA256 checks the hole-skipping hash against a plain one, on
// sparse files with data at the start, middle and end.
func TestFileSHA256(t *testing.T) {
	t.Parallel()
	for name, writes := range map[string]map[int64]string{
		"empty":     {},
		"all holes": {-1: ""},
		"start":     {0: "data at the start"},
		"middle":    {3<<20 + 17: "in the middle"},
		"end":       {8<<20 - 3: "end"},
		"several":   {0: "a", 1 << 20: "b", 5<<20 + 4095: "c", 8<<20 - 1: "d"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "f")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			if len(writes) > 0 {
				f.Truncate(8 << 20)
			}
			for off, s := range writes {
				if off >= 0 {
					f.WriteAt([]byte(s), off)
				}
			}
			f.Close()
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			want := sha256.Sum256(b)
			got, n, err := fileSHA256(p)
			if err != nil {
				t.Fatal(err)
			}
			if got != hex.EncodeToString(want[:]) || n != int64(len(b)) {
				t.Errorf("fileSHA256 = %s, %d; want %x, %d", got, n, want, len(b))
			}
		})
	}
}

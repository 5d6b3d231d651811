package kmod

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPacked(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "lib/modules/6.1.0-56-amd64")
	os.MkdirAll(dir, 0o755)
	dep := "kernel/drivers/block/nbd.ko:\nkernel/drivers/net/virtio_net.ko.xz: kernel/net/core/failover.ko.xz\nkernel/arch/x86/crypto/crc32c-intel.ko.zst:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Packed(root, "6.1.0-56-amd64")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"crc32c-intel", "nbd", "virtio_net"}, got); diff != "" {
		t.Errorf("Packed (-want +got):\n%s", diff)
	}
}

const aliasFile = `# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias of:N*T*Cvirtio,mmio virtio_mmio
alias of:N*T*Cvirtio,mmioC* virtio_mmio
alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
alias fs-ext4 ext4
alias block-major-43-* nbd
`

func TestAliasesMatch(t *testing.T) {
	t.Parallel()
	a, err := ParseAliases([]byte(aliasFile))
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string][]string{
		"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00":           {"virtio_pci"},
		"pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01":           {"ahci"},
		"pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00":           nil,
		"virtio:d00000001v00001AF4":                                       {"virtio_net"},
		"virtio:d00000002v00001AF4":                                       {"virtio_blk"},
		"of:NvirtioT(null)Cvirtio,mmio":                                   {"virtio_mmio"},
		"cpu:type:x86,ven0000fam0006mod003D:feature:,0000,0001,0094,00C0": {"crc32c_intel"},
		"cpu:type:x86,ven0000fam0006mod003D:feature:,0000,0001,00C0":      nil,
		"usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00":               {"usb_storage"},
		"crc32c":           {"crc32c_generic", "crc32c_intel"},
		"block-major-43-0": {"nbd"},
	}
	for in, want := range tests {
		if got := a.Match(in); !cmp.Equal(got, want) {
			t.Errorf("Match(%q) = %q; want %q", in, got, want)
		}
	}
	if _, err := ParseAliases([]byte("alias onlytwo\n")); err == nil {
		t.Error("ParseAliases of a short line: no error")
	}
}

func TestFnmatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"", "", true},
		{"*", "", true},
		{"*", "a/b", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"[a-c]x", "bx", true},
		{"[!a-c]x", "bx", false},
		{"[^a-c]x", "dx", true},
		{"[]]", "]", true},
		{"[a", "[a", true},
		{`a\*`, "a*", true},
		{`a\*`, "ab", false},
		{"*in*", "dc00ic08isc06ip50in00", true},
	} {
		if got := fnmatch(tc.p, tc.s); got != tc.want {
			t.Errorf("fnmatch(%q, %q) = %v; want %v", tc.p, tc.s, got, tc.want)
		}
	}
}

func TestModaliases(t *testing.T) {
	t.Parallel()
	sys := t.TempDir()
	for path, alias := range map[string]string{
		"bus/pci/devices/0000:00:03.0":    "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
		"bus/virtio/devices/virtio0":      "virtio:d00000001v00001AF4\n",
		"bus/virtio/devices/virtio1":      "virtio:d00000001v00001AF4\n",
		"bus/platform/devices/serial8250": "",
	} {
		dir := filepath.Join(sys, path)
		os.MkdirAll(dir, 0o755)
		if alias != "" {
			os.WriteFile(filepath.Join(dir, "modalias"), []byte(alias), 0o444)
		}
	}
	os.MkdirAll(filepath.Join(sys, "bus/empty"), 0o755)
	got, err := Modaliases(sys)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "virtio:d00000001v00001AF4"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Modaliases (-want +got):\n%s", diff)
	}
}

// fnmatch agrees with path.Match wherever path.Match's rules are
// fnmatch's: ASCII (modaliases are; fnmatch works on bytes, path.Match on
// runes), no '/' in the name, no escapes or ! (negation for fnmatch, a plain
// character for path.Match), a well-formed pattern.
func FuzzFnmatch(f *testing.F) {
	f.Add("pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
	f.Add("[a-c]*?x", "bzzx")
	f.Fuzz(func(t *testing.T, p, s string) {
		if len(p) > 64 || len(s) > 128 || strings.ContainsAny(s, "/") || strings.ContainsAny(p, "\\/!") || !ascii(p) || !ascii(s) {
			return
		}
		want, err := path.Match(p, s)
		if err != nil {
			return
		}
		if got := fnmatch(p, s); got != want {
			t.Errorf("fnmatch(%q, %q) = %v; path.Match says %v", p, s, got, want)
		}
	})
}

func ascii(s string) bool {
	for i := range len(s) {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

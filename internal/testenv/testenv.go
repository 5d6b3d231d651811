// Package testenv lets tests find the external programs they drive (real
// NBD, DHCP and TFTP clients, QEMU) and decide whether to skip without them.
//
// Tests skip with a message naming the missing program, except when the
// environment variable RACKBOOT_REQUIRE_TOOLS=1 is set (as `make test`
// does after installing them): then a missing program fails the test, so
// CI can't pass by skipping.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// LookPath returns the path of the named program, or skips (or fails) t.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("RACKBOOT_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s is required (RACKBOOT_REQUIRE_TOOLS=1) but not found: %v", name, err)
	}
	t.Skipf("%s not found: %v (install it, or run make test)", name, err)
	return ""
}

// RequireRoot skips (or fails) t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("RACKBOOT_REQUIRE_TOOLS") == "1" {
		t.Fatal("this test needs root (RACKBOOT_REQUIRE_TOOLS=1)")
	}
	t.Skip("this test needs root")
}

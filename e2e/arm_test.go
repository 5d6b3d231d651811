package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/testenv"
)

// TestVirtualRackARM64 boots an arm64 board through Debian's U-Boot:
// DHCP, boot.scr.uimg, `pxe get` of its PXELINUX-format config, kernel
// and initramfs over TFTP, then rackboot's initramfs and the arm64 master
// root to the agent's ready. Under TCG it takes minutes: `make test-arm`
// runs it (RACKBOOT_E2E_ARM=1).
func TestVirtualRackARM64(t *testing.T) {
	if os.Getenv("RACKBOOT_E2E_ARM") != "1" {
		t.Skip("arm64 boards take minutes under TCG: make test-arm (RACKBOOT_E2E_ARM=1)")
	}
	testenv.LookPath(t, "qemu-system-aarch64")
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	r := newTestRack(ctx, t)
	if err := r.Artifacts.CheckARM64(); err != nil {
		t.Fatalf("arm64 artifacts missing (make initramfs rootfs ARCH=arm64): %v", err)
	}
	b, err := r.AddBoard("arm64-a", "arm64", "ipxe")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.StartAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.PowerOn(ctx); err != nil {
		t.Fatal(err)
	}
	boot, err := r.WaitStep(ctx, b.Name, "ready", 0)
	if err != nil {
		t.Fatal(err)
	}
	PrintTimeline(t.Output(), b, boot)
	sr, _ := StepTime(b, boot, "step", "switch_root")
	rd, _ := StepTime(b, boot, "step", "ready")
	t.Logf("%s: power-on to root mounted (switch_root) %.1fs, to ready %.1fs (tcg)", b.Name, sr.Seconds(), rd.Seconds())
	var sawScript, sawConfig bool
	for _, e := range boot.Events {
		sawScript = sawScript || (e.Kind == "dhcp" && strings.Contains(e.Name, "boot.scr.uimg"))
		sawConfig = sawConfig || (e.Kind == "config" && strings.HasPrefix(e.Name, "pxelinux.cfg/"))
	}
	if !sawScript || !sawConfig {
		t.Errorf("the boot didn't go through U-Boot's script and pxe get: %+v", boot.Events)
	}
	if err := login(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got := run(ctx, t, b, "uname -m; cat /etc/hostname; findmnt -n -o SOURCE /"); !strings.Contains(got, "aarch64") || !strings.Contains(got, "arm64-a") || !strings.Contains(got, "/dev/nbd0") {
		t.Errorf("arm64 board: %s", got)
	}
}

//go:build vmtest && linux

package rootfs

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rackboot/rackboot/e2e"
	"github.com/rackboot/rackboot/internal/testenv"
)

// bootImage boots out/images/RECIPE-amd64/root.img (or image) on a board
// named name in an e2e rack, skipping (failing with
// RACKBOOT_REQUIRE_TOOLS=1) if the artifacts are missing.
func bootImage(t *testing.T, recipe, image, name string) (context.Context, *e2e.Rack, *e2e.Board) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.LookPath(t, "qemu-system-x86_64")
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	a := e2e.DefaultArtifacts(repo)
	a.Image = filepath.Join(repo, "out/images", recipe+"-amd64", ImageFile)
	if image != "" {
		a.Image = image
	}
	if err := a.Check(); err != nil {
		msg := "missing artifacts (make build boot-tree initramfs rootfs RECIPE=" + recipe + "): " + err.Error()
		if os.Getenv("RACKBOOT_REQUIRE_TOOLS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	t.Cleanup(cancel)
	rack, err := e2e.NewRack(ctx, t.TempDir(), a)
	if err != nil {
		t.Fatal(err)
	}
	rack.Log = t.Output()
	t.Cleanup(func() { rack.Close() })
	b, err := rack.AddBoard(name, "amd64", "pxelinux")
	if err != nil {
		t.Fatal(err)
	}
	if err := rack.StartAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.PowerOn(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(rack.Dir, b.Name+".console.log"))
			t.Logf("console (end):\n%s", log[max(0, len(log)-6000):])
		}
	})
	if err := b.Console().ExpectString(ctx, name+" login:"); err != nil {
		t.Fatalf("no login prompt: %v", err)
	}
	t.Logf("login prompt %s after power on (%s)", time.Since(b.PoweredOn()).Round(time.Second), rack.Accel)
	return ctx, rack, b
}

// TestBuilderBoots boots the builder image (out/images/builder-amd64) and
// checks that sshd answers with host keys made at this boot (the image
// has none), from the appliance's side.
func TestBuilderBoots(t *testing.T) {
	testenv.LookPath(t, "ssh-keyscan")
	ctx, rack, b := bootImage(t, "builder", os.Getenv("RACKBOOT_ROOTFS_BUILDER_IMAGE"), "bld1")
	var keys []byte
	for {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", rack.NS, "ssh-keyscan", "-T", "5", b.IP.String()).Output()
		if err == nil && bytes.Contains(out, []byte("ssh-ed25519 ")) {
			keys = out
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("sshd never answered with host keys: %v", err)
		case <-time.After(2 * time.Second): // sshd may still be starting
		}
	}
	for _, kind := range []string{"ssh-ed25519 ", "ecdsa-sha2-nistp256 ", "ssh-rsa "} {
		if !bytes.Contains(keys, []byte(kind)) {
			t.Errorf("ssh-keyscan found no %s key:\n%s", kind, keys)
		}
	}
	t.Logf("sshd answers %s after power on", time.Since(b.PoweredOn()).Round(time.Second))
}

// TestMinimalBoots boots the minimal image (out/images/minimal-amd64, or
// RACKBOOT_ROOTFS_IMAGE) on a virtual board of the e2e rack: systemd must
// reach a login prompt on the serial console, root must log in without a
// password, and the booted system must have kept its network and root
// (nothing reconfigured the boot interface), a transient machine ID, the
// board's hostname, and the agent enabled.
//
//	make build boot-tree initramfs rootfs
//	go test -tags vmtest -run TestMinimalBoots -v ./rootfs
func TestMinimalBoots(t *testing.T) {
	ctx, _, b := bootImage(t, "minimal", os.Getenv("RACKBOOT_ROOTFS_IMAGE"), "min1")
	con := b.Console()
	con.Send("root")
	if _, err := con.Expect(ctx, regexp.MustCompile(`root@min1:~# `)); err != nil {
		t.Fatalf("root did not get a shell: %v", err)
	}
	run := func(cmd string) string {
		t.Helper()
		out, status, err := con.Run(ctx, cmd)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("$ %s  [%d]\n%s", cmd, status, out)
		return strings.TrimSpace(out)
	}
	// Let the boot finish; is-system-running says degraded if a unit failed.
	state := run("systemctl is-system-running --wait")
	if failed := run("systemctl --failed --no-legend --plain"); state != "running" || failed != "" {
		t.Errorf("system %s; failed units: %q", state, failed)
	}
	if got := run("findmnt -n -o SOURCE,FSTYPE /"); !regexp.MustCompile(`^/dev/nbd\d+\s+ext4$`).MatchString(got) {
		t.Errorf("root = %q; want /dev/nbdN ext4", got)
	}
	if got := run("cat /etc/machine-id"); !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(got) {
		t.Errorf("machine-id = %q; want a transient ID", got)
	}
	if got := run("hostname"); got != "min1" {
		t.Errorf("hostname = %q; want min1", got)
	}
	if got := run("ip -o -4 addr show scope global"); !strings.Contains(got, b.IP.String()+"/") {
		t.Errorf("addresses %q; want the board's %s kept", got, b.IP)
	}
	if got := run("systemctl is-enabled systemd-networkd.service systemd-firstboot.service"); got != "masked\nmasked" {
		t.Errorf("networkd, firstboot: %q; want masked", got)
	}
	if got := run("systemctl is-enabled rackboot-agent.service; systemctl is-active rackboot-agent.service"); got != "enabled\nactive" {
		t.Errorf("rackboot-agent: %q; want enabled and active", got)
	}
	if got := run("ls /run/log/journal | wc -l; find /var/log/journal -type f | wc -l"); got != "1\n0" {
		t.Errorf("journal files in /run, /var: %q; want the journal in /run only (Storage=volatile)", got)
	}
}

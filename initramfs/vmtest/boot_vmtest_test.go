//go:build vmtest && linux

// Package vmtest boots the real initramfs (out/boot/ARCH from
// scripts/kernel.sh) in QEMU against a real NBD server and DHCP server in
// a network namespace, and checks that the board ends up in its root.
//
//	make initramfs ARCH=amd64
//	go test -tags vmtest -run TestBoot -v ./initramfs/vmtest/
package vmtest

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/testenv"
)

func TestBootAMD64(t *testing.T) { testBoot(t, archs["amd64"]) }
func TestBootARM64(t *testing.T) { testBoot(t, archs["arm64"]) }
func TestBootARMHF(t *testing.T) { testBoot(t, archs["armhf"]) }

// testRoot makes an ext4 image whose /sbin/init reports what it sees and
// powers off.
func testRoot(t *testing.T, busybox string) string {
	t.Helper()
	tree := rootTree(t, busybox)
	script := `#!/bin/sh
bb=/bin/busybox
root=$($bb awk '$2=="/"{print $1","$3","substr($4,1,2)}' /proc/mounts)
build=$($bb awk '$2=="/build"{print $1","$3}' /proc/mounts)
label=$($bb dd if=/dev/vda1 bs=1 skip=1144 count=16 2>/dev/null | $bb tr -d '\000')
markers=$(` + strings.ReplaceAll(markerCheck, "DISK", "/dev/vda") + `)
echo written > /written && $bb sync && w=$($bb cat /written)
echo "RACKBOOT-TEST-ROOT root=$root build=$build label=$label markers=$markers hostname=$($bb cat /etc/hostname) machineid=$($bb wc -c < /etc/machine-id) written=$w pid=$$"
$bb poweroff -f
`
	writeFile(t, filepath.Join(tree, "sbin/init"), script, 0o755)
	return mkfs(t, tree, "32M")
}

func testBoot(t *testing.T, a arch) {
	testenvTools(t)
	kernel, initrd, busybox := artifacts(t, a)
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()

	rootImg := testRoot(t, busybox)
	disk := buildDisk(t)
	// Negative control: the check the test root runs finds the markers on
	// the disk as it is before the boot, so markers=0 afterwards means the
	// disk was wiped, not that the check can't see them. It runs with the
	// guest's busybox on x86, the host's elsewhere.
	bb := busybox
	if a.name != "amd64" {
		bb = testenv.LookPath(t, "busybox")
	}
	out, err := exec.Command(bb, "sh", "-c", "bb="+bb+"; "+strings.ReplaceAll(markerCheck, "DISK", disk)).Output()
	if err != nil || strings.TrimSpace(string(out)) != "5" {
		t.Fatalf("marker check on the unwiped disk = %q, %v; want 5 (the check must see the markers)", out, err)
	}
	t.Logf("negative control: the marker check finds %s markers on the build disk before the boot", strings.TrimSpace(string(out)))

	l := newLab(t, ctx, rootImg)
	v := l.boot(a, kernel, initrd, disk, l.cmdline(a))
	rootRE := regexp.MustCompile(`RACKBOOT-TEST-ROOT (.*)`)
	m, err := v.con.wait(ctx, 0, rootRE, v.done)
	if err != nil {
		t.Fatalf("the test root's init line never came: %v", err)
	}
	wall := time.Since(v.start)
	<-v.done // poweroff ends QEMU
	got := fields(m[1])
	t.Logf("%s: test root says: %s (QEMU start to root init: %s)", a.name, m[1], wall.Round(time.Millisecond))

	if !strings.HasPrefix(got["root"], "/dev/nbd0,ext4,rw") {
		t.Errorf("root = %q; want /dev/nbd0, ext4, rw", got["root"])
	}
	if got["written"] != "written" || got["hostname"] != "vmboard" || got["machineid"] != "0" || got["pid"] != "1" {
		t.Errorf("root state: %v", got)
	}
	if got["build"] != "/dev/vda1,ext4" || got["label"] != "rackboot-build" || got["markers"] != "0" {
		t.Errorf("build disk: build=%q label=%q markers=%q; want a fresh ext4 rackboot-build on /dev/vda1 and no marker", got["build"], got["label"], got["markers"])
	}
	if !strings.Contains(l.dhcp.String(), "rackboot-initramfs") {
		t.Errorf("dnsmasq saw no vendor class rackboot-initramfs")
	}

	summary, _, withoutDisk := initTimings(v.con)
	t.Logf("%s timings (TCG, -m 1G, 1 vCPU; modules load while the network comes up, so shares overlap):\n%s", a.name, summary)
	if withoutDisk > 3*time.Second {
		t.Logf("over the 3 s target: /init to switch_root without the disk took %s", withoutDisk)
	}

	// The appliance heard every step. Modules load while the network comes
	// up, so those two come in either order.
	var names []string
	for _, s := range l.reps.all() {
		names = append(names, s.Name+":"+s.Status)
	}
	for i := 0; i+1 < len(names); i++ {
		if names[i] == "network:ok" && names[i+1] == "modules:ok" {
			names[i], names[i+1] = names[i+1], names[i]
		}
	}
	want := "mount:ok cmdline:ok modules:ok network:ok nbd:ok disk:ok identity:ok switch_root:ok"
	if strings.Join(names, " ") != want {
		t.Errorf("reports = %q; want %q", strings.Join(names, " "), want)
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// testenvTools skips without root or the programs every VM test needs.
func testenvTools(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.LookPath(t, "mkfs.ext4")
	testenv.LookPath(t, "dnsmasq")
	testenv.LookPath(t, "ss")
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

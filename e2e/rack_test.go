package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/testenv"
)

// repoRoot is the repository, two levels up from this package's tests.
func repoRoot(t *testing.T) string {
	t.Helper()
	abs, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// newTestRack builds a rack from the artifacts of `make build boot-tree
// initramfs rootfs`, skipping (or, under RACKBOOT_REQUIRE_TOOLS=1, failing)
// without them.
func newTestRack(ctx context.Context, t *testing.T) *Rack {
	t.Helper()
	testenv.RequireRoot(t)
	for _, p := range []string{"qemu-system-x86_64", "curl", "ip"} {
		testenv.LookPath(t, p)
	}
	a := DefaultArtifacts(repoRoot(t))
	if err := a.Check(); err != nil {
		if os.Getenv("RACKBOOT_REQUIRE_TOOLS") == "1" {
			t.Fatalf("virtual rack artifacts missing (make build boot-tree initramfs rootfs): %v", err)
		}
		t.Skipf("virtual rack artifacts missing (make build boot-tree initramfs rootfs): %v", err)
	}
	r, err := NewRack(ctx, t.TempDir(), a)
	if err != nil {
		t.Fatal(err)
	}
	r.Log = t.Output()
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{"rackboot.log"} {
				if b, err := os.ReadFile(filepath.Join(r.Dir, f)); err == nil {
					t.Logf("%s (tail):\n%s", f, tail(b, 60))
				}
			}
			for _, b := range r.boards {
				if log, err := os.ReadFile(filepath.Join(r.Dir, b.Name+".console.log")); err == nil {
					t.Logf("%s console (tail):\n%s", b.Name, tail(log, 80))
				}
			}
		}
		r.Close()
	})
	return r
}

func tail(b []byte, lines int) string {
	s := strings.Split(string(b), "\n")
	if len(s) > lines {
		s = s[len(s)-lines:]
	}
	return strings.Join(s, "\n")
}

// login logs in as root on the serial console (the minimal image has an
// empty root password on the console, its only way in).
func login(ctx context.Context, b *Board) error {
	c := b.Console()
	if _, err := c.Expect(ctx, regexp.MustCompile(`login: $|login: `)); err != nil {
		return err
	}
	c.Send("root")
	if _, err := c.Expect(ctx, regexp.MustCompile(`[#$] $|# `)); err != nil {
		return err
	}
	// No colours, no paging, no echo games: a plain prompt for Run.
	_, _, err := c.Run(ctx, "export TERM=dumb PS1='# '; stty -echo 2>/dev/null; true")
	return err
}

func run(ctx context.Context, t *testing.T, b *Board, cmd string) string {
	t.Helper()
	out, status, err := b.Console().Run(ctx, cmd)
	if err != nil {
		t.Fatalf("%s: %v", b.Name, err)
	}
	if status != 0 {
		t.Fatalf("%s: %q exited %d:\n%s", b.Name, cmd, status, out)
	}
	return out
}

func fileSHA256(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestVirtualRack is the end-to-end proof on x86: two boards boot
// unattended through real firmware, come back clean after a reset nobody
// asked for, keep their root across an appliance crash, and can't reach
// each other's boot.
func TestVirtualRack(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Minute)
	defer cancel()
	r := newTestRack(ctx, t)
	// Board A boots the way the issue tells it: iPXE ROM, PXELINUX over
	// TFTP, its config; board B takes the iPXE script over HTTP.
	a, err := r.AddBoard("x86-a", "amd64", "pxelinux")
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.AddBoard("x86-b", "amd64", "ipxe")
	if err != nil {
		t.Fatal(err)
	}
	// B's build disk is NVMe: the initramfs must carry the driver, or
	// the disk step finds no disk and the boot fails.
	b.DiskBus = "nvme"
	if err := r.StartAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	master := fileSHA256(t, r.Artifacts.Image)

	// 1. Two boards boot concurrently to ready.
	for _, bd := range []*Board{a, b} {
		if err := bd.PowerOn(ctx); err != nil {
			t.Fatal(err)
		}
	}
	boots := map[string]Boot{}
	for _, bd := range []*Board{a, b} {
		boot, err := r.WaitStep(ctx, bd.Name, "ready", 0)
		if err != nil {
			t.Fatal(err)
		}
		boots[bd.Name] = boot
		PrintTimeline(t.Output(), bd, boot)
		sr, _ := StepTime(bd, boot, "step", "switch_root")
		rd, _ := StepTime(bd, boot, "step", "ready")
		t.Logf("%s: power-on to root mounted (switch_root) %.1fs, to ready %.1fs (%s)", bd.Name, sr.Seconds(), rd.Seconds(), r.Accel)
	}
	if boots["x86-a"].IP == boots["x86-b"].IP || boots["x86-a"].ID == boots["x86-b"].ID {
		t.Fatalf("the boards share an address or a boot: %+v", boots)
	}
	for _, bd := range []*Board{a, b} {
		if err := login(ctx, bd); err != nil {
			t.Fatalf("%s: logging in: %v", bd.Name, err)
		}
		if got := strings.TrimSpace(run(ctx, t, bd, "cat /etc/hostname")); got != bd.Name {
			t.Errorf("%s: hostname %q", bd.Name, got)
		}
		disk := "/dev/vda1"
		if bd.DiskBus == "nvme" {
			disk = "/dev/nvme0n1p1"
		}
		if got := run(ctx, t, bd, "findmnt -n -o SOURCE /; findmnt -n -o SOURCE,FSTYPE /build"); strings.Join(strings.Fields(got), " ") != "/dev/nbd0 "+disk+" ext4" {
			t.Errorf("%s: root and /build: %q; want /dev/nbd0, and %s ext4", bd.Name, got, disk)
		}
	}
	sessions, _ := r.Sessions(ctx)
	if strings.Count(sessions, "x86-a@") != 1 || strings.Count(sessions, "x86-b@") != 1 {
		t.Errorf("want one write layer per board:\n%s", sessions)
	}

	// 4. Isolation: from board A, board B's config and root are out of
	// reach, even knowing B's token.
	tokB := regexp.MustCompile(`rackboot\.token=([0-9a-f]{32})`).FindStringSubmatch(run(ctx, t, b, "cat /proc/cmdline"))
	if tokB == nil {
		t.Fatal("no token on board B's command line")
	}
	cfgB := fmt.Sprintf("/pxelinux.cfg/01-%s", strings.ReplaceAll(b.MAC, ":", "-"))
	got := run(ctx, t, a, `exec 3<>/dev/tcp/10.66.0.1/8080; printf 'GET `+cfgB+` HTTP/1.0\r\n\r\n' >&3; head -1 <&3`)
	if !strings.Contains(got, "404") {
		t.Errorf("board A fetching B's config: %q; want 404", got)
	}
	if out, status, _ := a.Console().Run(ctx, "rackboot-agent check-export nbd://10.66.0.1:10809/"+tokB[1]); status == 0 {
		t.Errorf("board A attached board B's root:\n%s", out)
	}

	// 2. A clean boot after a reset nobody asked for.
	const marker = "RACKBOOT-E2E-MARKER-7f3a"
	run(ctx, t, a, fmt.Sprintf(`for f in /etc/marker /root/marker /var/marker /build/marker; do echo %s > $f; done; `+
		`echo %s | dd of=/dev/vda bs=1M seek=4096 conv=fsync 2>/dev/null; sync`, marker, marker))
	prev := boots["x86-a"]
	if err := a.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	boot2, err := r.WaitStep(ctx, a.Name, "ready", prev.ID)
	if err != nil {
		t.Fatal(err)
	}
	PrintTimeline(t.Output(), a, boot2)
	if err := login(ctx, a); err != nil {
		t.Fatal(err)
	}
	got = run(ctx, t, a, fmt.Sprintf(`cat /etc/marker /root/marker /var/marker /build/marker 2>/dev/null; `+
		`dd if=/dev/vda bs=1M skip=4096 count=1 2>/dev/null | grep -c %s; `+
		`grep -rl %s /etc /root /var /build 2>/dev/null | head; true`, marker, marker))
	if strings.Contains(got, marker) || !regexp.MustCompile(`(?m)^0$`).MatchString(got) {
		t.Errorf("a marker of boot 1 survived into boot 2:\n%s", got)
	}
	sessions, _ = r.Sessions(ctx)
	if strings.Count(sessions, "x86-a@") != 1 {
		t.Errorf("the previous boot's layer is still on disk:\n%s", sessions)
	}
	if fileSHA256(t, r.Artifacts.Image) != master {
		t.Error("the master image changed")
	}

	// 3. The appliance dies (SIGKILL) while board A writes, and is back
	// within 10 s: the writes go on and are all there.
	run(ctx, t, a, `rm -f /root/counter; (i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo $i >> /root/counter; sync; sleep 0.1; done) >/dev/null 2>&1 &`)
	count := func() int {
		n, _ := strconv.Atoi(strings.TrimSpace(run(ctx, t, a, "tail -n 1 /root/counter")))
		return n
	}
	before := count()
	if err := r.StopAppliance(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	if err := r.StartAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("appliance back after %.1fs", time.Since(down).Seconds())
	// The board's writes resume once its agent has reconnected the root.
	deadline := time.Now().Add(3 * time.Minute)
	var after int
	for after = count(); after < before+20; after = count() {
		if time.Now().After(deadline) {
			t.Fatalf("writes stalled after the appliance restart: %d then %d", before, after)
		}
	}
	run(ctx, t, a, "kill %1 2>/dev/null; sync")
	if got := run(ctx, t, a, `awk 'NR != $1 { print "gap at " NR ": " $1; exit 1 }' /root/counter && wc -l < /root/counter`); strings.Contains(got, "gap") {
		t.Errorf("writes lost across the appliance restart: %s", got)
	}
	cur, err := r.CurrentBoot(ctx, a.Name)
	if err != nil || cur.ID != boot2.ID || !cur.Ended.IsZero() {
		t.Errorf("after its restart the appliance knows board A's boot as %+v (%v); want boot %d, running", cur, err, boot2.ID)
	}
}

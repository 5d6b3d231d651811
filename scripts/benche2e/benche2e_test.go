package main

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

	"github.com/google/go-cmp/cmp"
)

func TestArchiveReproducibleAndReadable(t *testing.T) {
	build := func() []byte {
		a := newArchive()
		a.file("init", 0o755, []byte("#!/bin/sh\necho hi\n"))
		a.symlink("bin/sh", "busybox")
		a.file("bin/busybox", 0o755, []byte("odd-sized\x00data"))
		a.charDev("dev/console", 0o600, 5, 1)
		a.dir("newroot")
		var b bytes.Buffer
		if err := a.writeTo(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	one, two := build(), build()
	if !bytes.Equal(one, two) {
		t.Fatal("two builds of the same archive differ")
	}
	if len(one)%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", len(one))
	}
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-t", "-v")
	cmd.Stdin = bytes.NewReader(one)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	for _, want := range []string{"bin/sh -> busybox", "dev/console", "init", "newroot", "5,"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio -tv output lacks %q:\n%s", want, out)
		}
	}
	cmd = exec.Command("cpio", "-i", "-d", "--quiet", "init", "bin/busybox")
	cmd.Stdin = bytes.NewReader(one)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "bin", "busybox")); string(b) != "odd-sized\x00data" {
		t.Errorf("bin/busybox extracted as %q", b)
	}
	if fi, err := os.Stat(filepath.Join(dir, "init")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("init: %v, %v; want mode 0755", fi, err)
	}
}

func TestModuleLoadOrder(t *testing.T) {
	dep := []byte(`kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
`)
	got, err := moduleLoadOrder(dep, []string{"virtio_net", "crc32c_intel", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko",
		"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/net/virtio_net.ko", "kernel/arch/x86/crypto/crc32c-intel.ko",
		"kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("moduleLoadOrder (-want +got):\n%s", diff)
	}
	if _, err := moduleLoadOrder(dep, []string{"nbd"}); err == nil {
		t.Error("moduleLoadOrder of a module not in modules.dep succeeded")
	}
}

func TestParseLDD(t *testing.T) {
	out := []byte("\tlinux-vdso.so.1 (0x00007ffd)\n" +
		"\tlibnl-3.so.200 => /lib/x86_64-linux-gnu/libnl-3.so.200 (0x00007f8d5cd07000)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f8d5c81e000)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f8d5cd56000)\n")
	want := []string{"/lib/x86_64-linux-gnu/libnl-3.so.200", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if diff := cmp.Diff(want, parseLDD(out)); diff != "" {
		t.Errorf("parseLDD (-want +got):\n%s", diff)
	}
}

// feed gives a capture chunks at the given times, in seconds.
func feed(cp *capture, chunks ...any) {
	for i := 0; i < len(chunks); i += 2 {
		cp.add(time.Duration(chunks[i].(float64)*float64(time.Second)), chunks[i+1].(string))
	}
}

func TestMilestonesFromConsole(t *testing.T) {
	cp := &capture{update: make(chan struct{})}
	feed(cp,
		0.2, "\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r\n",
		2.5, "Press Ctrl-B for the iPXE command line...\x08 \x08net0: 52:54:00:66:00:01 using virtio-net\r\n",
		2.6, "Configuring (net0 52:54:00:66:00:01)...",
		18.7, ". ok\r\nFilename: pxelinux.0\r\n",
		18.9, "Loading vmlinuz... ",
		22.0, "ok\r\nLoading initrd.gz...ok\r\n",
		24.2, "Probing EDD (edd=off to disable)... o",
		28.3, "\x1bck\r[    0.000000] Linux version 6.1.0\r\n",
		35.0, "[    2.57] Run /init as init process\r\n",
		36.5, "[    4.29] EXT4-fs (nbd0): mounted filesystem with ordered data mode.\r\n",
		36.6, "standin: [4.34] root mounted from /dev/nbd0 on /newroot, switch_root\r\n",
	)
	got := findMilestones(cp.Lines(), commonMilestones)
	s := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	want := map[string]time.Duration{
		msDHCPStart: s(2.6), msDHCPEnd: s(18.7), msKernelFetch: s(18.9), msKernelStart: s(24.2),
		msInit: s(35.0), msRootMounted: s(36.5),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("findMilestones (-want +got):\n%s", diff)
	}
	l, err := cp.wait(context.Background(), standinMarker, failLine)
	if err != nil || l.end != s(36.6) {
		t.Errorf("wait(marker) = %+v, %v; want the line ending at 36.6s", l, err)
	}
	if d, ok := phases[1].span(got); !ok || d != s(16.1) {
		t.Errorf("DHCP phase = %v, %v; want 16.1s", d, ok)
	}
}

func TestCaptureWaitFailsOnFailureLine(t *testing.T) {
	cp := &capture{update: make(chan struct{})}
	go feed(cp, 1.0, "rackboot: [5.0] BOOT FAILED at step nbd: refused\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := cp.wait(ctx, regexp.MustCompile(`switch_root to `), failLine)
	if err == nil || !strings.Contains(err.Error(), "BOOT FAILED") {
		t.Errorf("wait = %v; want the failure line", err)
	}
}

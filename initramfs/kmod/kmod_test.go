package kmod

import (
	"os"
	"path/filepath"
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

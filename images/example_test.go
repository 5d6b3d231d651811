package images_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/rackboot/rackboot/images"
)

// A root image with its manifest, kernel and initramfs is imported,
// activated, and looked up the way the server does when a boot starts.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "rackboot-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// Build inputs (normally `make rootfs` output: see images.FromDir).
	root := []byte("an ext4 image")
	files := map[string]string{
		"root.img":          string(root),
		"manifest.json":     fmt.Sprintf(`{"name":"minimal","arch":"amd64","epoch":1748736000,"sha256":"%x"}`, sha256.Sum256(root)),
		"vmlinuz":           "a kernel",
		"initramfs.cpio.gz": "an initramfs",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			log.Fatal(err)
		}
	}

	cat, err := images.Open(filepath.Join(dir, "state"))
	if err != nil {
		log.Fatal(err)
	}
	v, err := cat.Import(ctx, images.ImportSource{
		Image:    filepath.Join(dir, "root.img"),
		Manifest: filepath.Join(dir, "manifest.json"),
		Boot: map[string]images.BootFiles{"amd64": {
			Kernel: filepath.Join(dir, "vmlinuz"),
			Initrd: filepath.Join(dir, "initramfs.cpio.gz"),
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("imported", v)
	if err := cat.Activate(v.Name, v.Version); err != nil {
		log.Fatal(err)
	}

	// When a board boots: the active version, its root and its kernel.
	active, err := cat.Active("minimal-amd64")
	if err != nil {
		log.Fatal(err)
	}
	rel := func(p string) string { r, _ := filepath.Rel(cat.Dir(), p); return r }
	fmt.Println("root:", rel(active.RootPath))
	fmt.Println("kernel:", rel(active.Kernels["amd64"].Kernel))
	// Output:
	// imported minimal-amd64@20250601-2d1452c7db4c
	// root: minimal-amd64/20250601-2d1452c7db4c/root.img
	// kernel: minimal-amd64/20250601-2d1452c7db4c/boot/amd64/vmlinuz
}

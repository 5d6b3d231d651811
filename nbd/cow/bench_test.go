package cow

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// benchLayer creates a layer over a sparse base of size bytes on the real
// filesystem.
func benchLayer(b *testing.B, size int64, chunk int) (*Device, string) {
	b.Helper()
	dir := b.TempDir()
	basePath := filepath.Join(dir, "base.img")
	f, err := os.Create(basePath)
	if err != nil {
		b.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	img, err := OpenImage(basePath)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { img.Close() })
	layer := filepath.Join(dir, "layer")
	os.Mkdir(layer, 0o700)
	d, err := Create(img, layer, Options{ChunkSize: chunk})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	return d, layer
}

// BenchmarkChunkSize measures first 4 KiB writes at random pages of a fresh
// layer for several chunk sizes: their speed, and what they cost on disk
// per byte written (disk/written).
func BenchmarkChunkSize(b *testing.B) {
	for _, chunk := range []int{4 << 10, 16 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("chunk=%dK", chunk>>10), func(b *testing.B) {
			const size = 4 << 30
			d, dir := benchLayer(b, size, chunk)
			rng := rand.New(rand.NewPCG(1, 2))
			page := make([]byte, 4096)
			b.SetBytes(4096)
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				if _, err := d.WriteAt(page, int64(rng.IntN(size/4096))*4096); err != nil {
					b.Fatal(err)
				}
				n++
			}
			b.StopTimer()
			if err := d.Sync(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(diskUsage(dir))/float64(n*4096), "disk/written")
		})
	}
}

// BenchmarkOverwrite measures 4 KiB writes to chunks already in the layer.
func BenchmarkOverwrite(b *testing.B) {
	const size = 256 << 20
	d, _ := benchLayer(b, size, 0)
	page := make([]byte, 4096)
	for off := int64(0); off < size; off += 1 << 20 {
		d.WriteAt(make([]byte, 1<<20), off)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.WriteAt(page, int64(rng.IntN(size/4096))*4096); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRead measures reads that mix base and layer chunks.
func BenchmarkRead(b *testing.B) {
	for _, n := range []int{4 << 10, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("size=%dK", n>>10), func(b *testing.B) {
			const size = 256 << 20
			d, _ := benchLayer(b, size, 0)
			rng := rand.New(rand.NewPCG(5, 6))
			for range 4096 { // a layer with scattered pages
				d.WriteAt(make([]byte, 4096), int64(rng.IntN(size/4096))*4096)
			}
			p := make([]byte, n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.ReadAt(p, int64(rng.IntN(size/n))*int64(n)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

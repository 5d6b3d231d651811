package disk

import (
	"fmt"
	"testing"
)

// BenchmarkWipeBuild wipes and rebuilds sparse image files: Wipe punches
// the whole file out and zeroes the old signature areas, Build writes the
// GPT and runs mke2fs at the partition's offset. Each iteration starts from
// the filesystem the previous one left (an 8-12 MiB old layout to find and
// zero), as on a board rebooting.
func BenchmarkWipeBuild(b *testing.B) {
	needTools(b, "mke2fs")
	for _, size := range []int64{8 << 30, 64 << 30} {
		b.Run(fmt.Sprintf("%dGiB", size>>30), func(b *testing.B) {
			p := sparseImage(b, size)
			if _, err := Build(b.Context(), p, BuildOptions{}); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				wr, err := Wipe(b.Context(), p, WipeOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Build(b.Context(), p, BuildOptions{Prezeroed: wr.ZeroFilled}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWipe and BenchmarkBuild split the same work in two.
func BenchmarkWipe(b *testing.B) {
	needTools(b, "mke2fs")
	for _, size := range []int64{8 << 30, 64 << 30} {
		b.Run(fmt.Sprintf("%dGiB", size>>30), func(b *testing.B) {
			p := sparseImage(b, size)
			for b.Loop() {
				b.StopTimer()
				if _, err := Build(b.Context(), p, BuildOptions{}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, err := Wipe(b.Context(), p, WipeOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkBuild(b *testing.B) {
	needTools(b, "mke2fs")
	for _, size := range []int64{8 << 30, 64 << 30} {
		b.Run(fmt.Sprintf("%dGiB", size>>30), func(b *testing.B) {
			p := sparseImage(b, size)
			for b.Loop() {
				if _, err := Build(b.Context(), p, BuildOptions{Prezeroed: true}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

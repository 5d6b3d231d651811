package catalog

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// BenchmarkNBD measures reads and writes through the whole stack (our
// client, loopback TCP, the server, a copy-on-write session) with 32
// requests in flight, and 4 KiB reads one at a time (queue depth 1: the
// round trip's latency). `make bench-nbd` compares against other servers with
// fio; this tracks our own changes with benchstat.
func BenchmarkNBD(b *testing.B) {
	const size = 256 << 20
	f := newFixture(b, size)
	b.Run("read/qd=1/size=4K", func(b *testing.B) {
		c := f.dial(b, "img")
		b.SetBytes(4 << 10)
		b.ReportAllocs()
		rng := rand.New(rand.NewPCG(1, 2))
		p := make([]byte, 4<<10)
		for b.Loop() {
			if _, err := c.ReadAt(p, int64(rng.IntN(size>>12))<<12); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, op := range []string{"read", "write"} {
		for _, n := range []int{4 << 10, 64 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("%s/size=%dK", op, n>>10), func(b *testing.B) {
				c := f.dial(b, "img@bench")
				b.SetBytes(int64(n))
				b.ReportAllocs()
				var mu sync.Mutex
				rng := rand.New(rand.NewPCG(1, 2))
				next := func() int64 {
					mu.Lock()
					defer mu.Unlock()
					return int64(rng.IntN(size/n)) * int64(n)
				}
				b.SetParallelism(16) // 32 in flight on 2 CPUs
				b.RunParallel(func(pb *testing.PB) {
					p := make([]byte, n)
					for pb.Next() {
						var err error
						if op == "read" {
							_, err = c.ReadAt(p, next())
						} else {
							_, err = c.WriteAt(p, next())
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

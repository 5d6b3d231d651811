package tftp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
)

// BenchmarkTransfer fetches a 64 MiB in-memory file over loopback with
// pin/tftp's client, at the block size U-Boot uses on Ethernet and at the
// largest, with anticipation off and at 4 packets.
func BenchmarkTransfer(b *testing.B) {
	const size = 64 << 20
	data := testData(size, 1)
	handler := func(context.Context, string, netip.AddrPort) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(data)), size, nil
	}
	for _, blksize := range []int{1468, 65464} {
		for _, window := range []uint{0, 4} {
			b.Run(fmt.Sprintf("blksize=%d/anticipate=%d", blksize, window), func(b *testing.B) {
				srv := &Server{Handler: handler, Anticipate: window, Logger: slog.New(slog.DiscardHandler)}
				addr := startServer(b, srv)
				b.SetBytes(size)
				b.ReportAllocs()
				for b.Loop() {
					n, err := fetchTo(io.Discard, addr, "kernel", blksize)
					if err != nil {
						b.Fatal(err)
					}
					if n != size {
						b.Fatalf("got %d bytes; want %d", n, size)
					}
				}
			})
		}
	}
}

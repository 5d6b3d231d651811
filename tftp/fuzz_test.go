package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzServer sends arbitrary bytes as one UDP packet to a running server,
// then checks that it still serves a file correctly.
func FuzzServer(f *testing.F) {
	f.Add(rrq("f", "octet"))
	f.Add(rrq("f", "octet", "blksize", "65464", "tsize", "0"))
	f.Add(rrq("../f", "netascii", "BLKSIZE", "8"))
	f.Add(appendRequest(nil, request{op: opWRQ, filename: "f", mode: "octet"}))
	f.Add([]byte{0, opDATA, 0, 1, 'x'})
	f.Add([]byte{0, opACK, 0, 0})
	f.Add([]byte{0, opERROR, 0, 0, 0})
	f.Add([]byte("\x00\x01big\x00octet\x00blksize\x00512\x00\x00\x00"))
	f.Add([]byte{})

	dir := f.TempDir()
	want := testData(3000, 7)
	for name, data := range map[string][]byte{"f": want, "big": testData(1<<20, 8)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			f.Fatal(err)
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { root.Close() })
	srv := &Server{
		Handler: FileHandler(root),
		Logger:  slog.New(slog.DiscardHandler),
		// Transfers the fuzzer starts and abandons end quickly.
		Timeout:       50 * time.Millisecond,
		Retries:       1,
		MaxConcurrent: 512,
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pc) }()
	f.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			f.Errorf("Serve returned %v", err)
		}
	})
	server := pc.LocalAddr().(*net.UDPAddr)

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 2048 {
			return
		}
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.WriteToUDP(in, server); err != nil {
			t.Fatal(err)
		}
		// If that started a transfer, end it.
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		b := make([]byte, 70000)
		if n, from, err := c.ReadFromUDP(b); err == nil && n >= 2 {
			if op := binary.BigEndian.Uint16(b); op == opDATA || op == opOACK {
				c.WriteToUDP(appendError(nil, 0, "fuzz"), from)
			}
		}
		got, _, err := fetch(server.String(), "f", 1468)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("after % x: fetch: %v, %d bytes; want %d", in, err, len(got), len(want))
		}
	})
}

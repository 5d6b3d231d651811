package rawio

import (
	"bytes"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a.(*net.TCPConn), r.c.(*net.TCPConn)
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFileReadAt compares File.ReadAt with os.File.ReadAt over cached and
// uncached pages, across the end of the file and past it.
func TestFileReadAt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	data := randBytes(t, 1<<20+123)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dropCache(f) // best effort: some reads must miss the page cache
	rf := NewFile(f)
	for _, c := range []struct {
		off int64
		n   int
	}{
		{0, 4096}, {12345, 1}, {1 << 19, 64 << 10}, {int64(len(data)) - 100, 100},
		{int64(len(data)) - 100, 4096}, {int64(len(data)), 10}, {int64(len(data)) + 5, 10}, {7, 0},
	} {
		got := make([]byte, c.n)
		n, err := rf.ReadAt(got, c.off)
		want := make([]byte, c.n)
		wn, werr := f.ReadAt(want, c.off)
		if n != wn || !errors.Is(err, werr) && err != werr || !bytes.Equal(got[:n], want[:wn]) {
			t.Errorf("ReadAt(%d bytes at %d) = %d, %v; os.File gives %d, %v", c.n, c.off, n, err, wn, werr)
		}
	}
	if _, err := rf.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("ReadAt at a negative offset succeeded")
	}
}

package rawio

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
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

// TestConnWriteBuffersLarge writes far more than the socket buffers hold,
// in several pieces, so writes come back short and wait in the poller; the
// peer must receive every byte in order.
func TestConnWriteBuffersLarge(t *testing.T) {
	a, b := tcpPair(t)
	a.SetWriteBuffer(16 << 10)
	b.SetReadBuffer(16 << 10)
	parts := [][]byte{randBytes(t, 28), nil, randBytes(t, 3<<20), randBytes(t, 1), randBytes(t, 5<<20+7)}
	want := bytes.Join(parts, nil)
	got := make(chan []byte, 1)
	go func() {
		buf, _ := io.ReadAll(b)
		got <- buf
	}()
	w := NewConn(a)
	if w == nil {
		t.Fatal("NewConn: no raw access to a TCP connection")
	}
	if err := w.WriteBuffers(parts...); err != nil {
		t.Fatalf("WriteBuffers: %v", err)
	}
	a.CloseWrite()
	if g := <-got; !bytes.Equal(g, want) {
		t.Fatalf("peer got %d bytes, want %d identical ones", len(g), len(want))
	}
}

func TestConnWriteBuffersMany(t *testing.T) {
	a, b := tcpPair(t)
	var parts [][]byte
	for i := range 3 * maxIovecs {
		parts = append(parts, bytes.Repeat([]byte{byte(i)}, i%7+1))
	}
	want := bytes.Join(parts, nil)
	if err := NewConn(a).WriteBuffers(parts...); err != nil {
		t.Fatal(err)
	}
	a.CloseWrite()
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("peer got %d bytes (err %v), want %d identical ones", len(got), err, len(want))
	}
}

func TestConnRead(t *testing.T) {
	a, b := tcpPair(t)
	want := randBytes(t, 1<<20)
	go func() {
		a.Write(want)
		a.CloseWrite()
	}()
	got, err := io.ReadAll(NewConn(b)) // ends on io.EOF
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d identical ones", len(got), len(want))
	}
}

// TestConnReadDeadline: a read waiting in the poller ends at the
// connection's deadline, as net.Conn's own Read does.
func TestConnReadDeadline(t *testing.T) {
	_, b := tcpPair(t)
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := NewConn(b).Read(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after the deadline: %v, want a deadline error", err)
	}
}

func TestConnReadAfterClose(t *testing.T) {
	_, b := tcpPair(t)
	c := NewConn(b)
	b.Close()
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read on a closed connection: %v, want net.ErrClosed", err)
	}
	if err := c.WriteBuffers([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteBuffers on a closed connection: %v, want net.ErrClosed", err)
	}
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

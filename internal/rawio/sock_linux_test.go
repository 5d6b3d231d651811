package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/eventtest"
)

// detached returns a Sock detached from one end of a loopback TCP
// connection, and the other end.
func detached(t *testing.T) (*Sock, *net.TCPConn) {
	t.Helper()
	a, b := tcpPair(t)
	s, err := Detach(b)
	if err != nil {
		t.Fatalf("Detach: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, a
}

// readAsync reads from s in a goroutine; the channel gets the result.
func readAsync(s *Sock, n int) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		p := make([]byte, n)
		k, err := s.Read(p)
		ch <- readResult{p[:k], err}
	}()
	return ch
}

type readResult struct {
	p   []byte
	err error
}

// within returns what ch delivers, failing if that takes longer than
// eventtest.Within.
func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(eventtest.Within):
		t.Fatalf("%s: still under way after %v", what, eventtest.Within)
		panic("unreachable")
	}
}

// goErr runs f in a goroutine; the channel gets its error.
func goErr(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// waitInPpoll waits until more than before threads of the process are in
// ppoll, failing if done delivers first.
func waitInPpoll(t *testing.T, before int, done <-chan readResult) {
	t.Helper()
	giveUp := time.Now().Add(30 * time.Second)
	for threadsInPpoll(t) <= before {
		select {
		case r := <-done:
			t.Fatalf("Read returned %q, %v before anything was written", r.p, r.err)
		default:
		}
		if time.Now().After(giveUp) {
			t.Fatal("no thread waits in ppoll: the Read is not waiting in the kernel")
		}
		runtime.Gosched()
	}
}

// TestDetach: the Sock carries the connection both ways, the original
// net.Conn is closed, and a Read with nothing to read waits in ppoll (in
// the kernel, outside the network poller) until data arrives.
func TestDetach(t *testing.T) {
	a, b := tcpPair(t)
	before := threadsInPpoll(t)
	s, err := Detach(b)
	if err != nil {
		t.Fatalf("Detach: %v", err)
	}
	defer s.Close()
	if _, err := b.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write on the detached net.Conn: %v, want net.ErrClosed", err)
	}
	done := readAsync(s, 64)
	waitInPpoll(t, before, done)
	want := []byte("next request")
	if _, err := a.Write(want); err != nil {
		t.Fatal(err)
	}
	if r := within(t, done, "Read of what the peer sent"); r.err != nil || !bytes.Equal(r.p, want) {
		t.Fatalf("Read = %q, %v; want %q", r.p, r.err, want)
	}
	if err := s.WriteBuffers([]byte("re"), []byte("ply")); err != nil {
		t.Fatalf("WriteBuffers: %v", err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(a, got); err != nil || string(got) != "reply" {
		t.Fatalf("peer read %q, %v; want \"reply\"", got, err)
	}
}

func TestDetachUnsupported(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := Detach(b); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Detach(net.Pipe): %v, want ErrUnsupported", err)
	}
}

func TestSockRead(t *testing.T) {
	s, a := detached(t)
	want := randBytes(t, 1<<20)
	go func() {
		a.Write(want)
		a.CloseWrite()
	}()
	got, err := io.ReadAll(s) // ends on io.EOF
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d identical ones", len(got), len(want))
	}
}

// TestSockWriteBuffersLarge writes far more than the socket buffers hold,
// in several pieces, so writes come back short and wait; the peer must
// receive every byte in order.
func TestSockWriteBuffersLarge(t *testing.T) {
	s, a := detachedBuffers(t, 16<<10)
	parts := [][]byte{randBytes(t, 28), nil, randBytes(t, 3<<20), randBytes(t, 1), randBytes(t, 5<<20+7)}
	want := bytes.Join(parts, nil)
	got := make(chan []byte, 1)
	go func() {
		buf, _ := io.ReadAll(a)
		got <- buf
	}()
	if err := s.WriteBuffers(parts...); err != nil {
		t.Fatalf("WriteBuffers: %v", err)
	}
	s.Shutdown()
	if g := within(t, got, "peer reading"); !bytes.Equal(g, want) {
		t.Fatalf("peer got %d bytes, want %d identical ones", len(g), len(want))
	}
}

func TestSockWriteBuffersMany(t *testing.T) {
	s, a := detached(t)
	var parts [][]byte
	for i := range 3 * maxIovecs {
		parts = append(parts, bytes.Repeat([]byte{byte(i)}, i%7+1))
	}
	want := bytes.Join(parts, nil)
	if err := s.WriteBuffers(parts...); err != nil {
		t.Fatal(err)
	}
	s.Shutdown()
	a.SetReadDeadline(time.Now().Add(eventtest.Within))
	got, err := io.ReadAll(a)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("peer got %d bytes (err %v), want %d identical ones", len(got), err, len(want))
	}
}

// TestSockCloseRead: CloseRead ends a Read under way with io.EOF, and
// writing still works.
func TestSockCloseRead(t *testing.T) {
	s, a := detached(t)
	before := threadsInPpoll(t)
	done := readAsync(s, 10)
	waitInPpoll(t, before, done)
	if err := s.CloseRead(); err != nil {
		t.Fatalf("CloseRead: %v", err)
	}
	if r := within(t, done, "Read after CloseRead"); r.err != io.EOF {
		t.Fatalf("Read after CloseRead: %q, %v; want io.EOF", r.p, r.err)
	}
	if err := s.WriteBuffers([]byte("still")); err != nil {
		t.Fatalf("WriteBuffers after CloseRead: %v", err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(a, got); err != nil || string(got) != "still" {
		t.Fatalf("peer read %q, %v", got, err)
	}
}

// detachedBuffers is detached with socket buffers of about n bytes
// between the Sock and its peer, so that a larger write has to wait for
// the peer to read.
func detachedBuffers(t *testing.T, n int) (*Sock, *net.TCPConn) {
	t.Helper()
	a, b := tcpPair(t)
	a.SetReadBuffer(n)
	b.SetWriteBuffer(n)
	s, err := Detach(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, a
}

// fillPeer makes s's writes block: the peer a reads nothing, and both
// socket buffers are small.
func fillPeer(t *testing.T) (*Sock, *net.TCPConn) {
	t.Helper()
	return detachedBuffers(t, 4<<10)
}

// TestSockShutdown: Shutdown ends a write blocked on a peer that doesn't
// read.
func TestSockShutdown(t *testing.T) {
	s, _ := fillPeer(t)
	done := goErr(func() error { return s.WriteBuffers(make([]byte, 64<<20)) })
	// The write can't finish: 64 MiB don't fit in the buffers. Shutdown
	// must end it whether it has started waiting yet or not.
	if err := s.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := within(t, done, "WriteBuffers after Shutdown"); err == nil {
		t.Fatal("WriteBuffers of 64 MiB to a peer that reads nothing succeeded after Shutdown")
	}
}

func TestSockWriteTimeout(t *testing.T) {
	s, _ := fillPeer(t)
	s.SetWriteTimeout(50 * time.Millisecond)
	err := within(t, goErr(func() error { return s.WriteBuffers(make([]byte, 64<<20)) }), "WriteBuffers with a write timeout")
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteBuffers to a peer that reads nothing: %v, want a deadline error", err)
	}
	f := tempFile(t, make([]byte, 64<<20))
	err = within(t, goErr(func() error { return s.SendFile(f, 0, 64<<20) }), "SendFile with a write timeout")
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("SendFile to a peer that reads nothing: %v, want a deadline error", err)
	}
}

func tempFile(t *testing.T, data []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestSockSendFile sends a range of a file larger than the socket
// buffers, so sendfile comes back short and waits, then a range past the
// file's end, which fails.
func TestSockSendFile(t *testing.T) {
	s, a := detachedBuffers(t, 16<<10)
	data := randBytes(t, 6<<20)
	f := tempFile(t, data)
	off, n := int64(12345), int64(5<<20)
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, n)
		k, _ := io.ReadFull(a, buf)
		got <- buf[:k]
	}()
	if err := s.SendFile(f, off, n); err != nil {
		t.Fatalf("SendFile: %v", err)
	}
	if g := within(t, got, "peer reading"); !bytes.Equal(g, data[off:off+n]) {
		t.Fatalf("peer got %d bytes, want %d identical ones", len(g), n)
	}
	if err := s.SendFile(f, int64(len(data))-10, 20); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("SendFile past the end: %v, want io.ErrUnexpectedEOF", err)
	}
}

// TestSockYieldWhile: a Read with requests in flight yields only a few
// times before it waits in the kernel, and still returns what arrives.
func TestSockYieldWhile(t *testing.T) {
	s, a := detached(t)
	var busy atomic.Int32
	busy.Store(1)
	s.YieldWhile(&busy)
	before := threadsInPpoll(t)
	done := readAsync(s, 10)
	waitInPpoll(t, before, done)
	if _, err := a.Write([]byte("req")); err != nil {
		t.Fatal(err)
	}
	if r := within(t, done, "Read of what the peer sent"); r.err != nil || string(r.p) != "req" {
		t.Fatalf("Read = %q, %v; want \"req\"", r.p, r.err)
	}
}

func TestSockClose(t *testing.T) {
	s, _ := detached(t)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
	if err := s.CloseRead(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("CloseRead after Close: %v, want net.ErrClosed", err)
	}
	if err := s.Shutdown(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Shutdown after Close: %v, want net.ErrClosed", err)
	}
}

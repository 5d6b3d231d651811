package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pin "github.com/pin/tftp/v3"

	"github.com/rackboot/rackboot/internal/eventtest"
)

// testData returns n deterministic pseudo-random bytes.
func testData(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	r.Read(b)
	return b
}

// testFiles are the sizes served by testTree, named by size: they cover
// the empty file, sizes around and at exact multiples of each tested block
// size, and a few MiB.
var testFiles = []int{
	0, 1, 511, 512, 513, 1024, 1467, 1468, 1469, 3 * 1468,
	65463, 65464, 65465, 2 * 65464, 512 * 4096, 3<<20 + 17,
}

// testTree makes a directory with testFiles, a subdirectory, a file
// outside the tree with symlinks pointing at it, and a FIFO. It returns
// the tree's path and the files' contents by name.
func testTree(t testing.TB) (string, map[string][]byte) {
	t.Helper()
	base := t.TempDir()
	dir := filepath.Join(base, "tree")
	files := map[string][]byte{}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "pxelinux.cfg"), 0o755))
	for i, n := range testFiles {
		name := fmt.Sprintf("f%d", n)
		files[name] = testData(n, uint64(i))
		must(os.WriteFile(filepath.Join(dir, name), files[name], 0o644))
	}
	files["pxelinux.cfg/default"] = []byte("DEFAULT linux\nLABEL linux\n  KERNEL vmlinuz\n")
	must(os.WriteFile(filepath.Join(dir, "pxelinux.cfg/default"), files["pxelinux.cfg/default"], 0o644))
	must(os.WriteFile(filepath.Join(base, "secret"), []byte("outside the tree"), 0o644))
	must(os.Symlink("../secret", filepath.Join(dir, "escape")))
	must(os.Symlink(filepath.Join(base, "secret"), filepath.Join(dir, "escape-abs")))
	must(os.Symlink("pxelinux.cfg/default", filepath.Join(dir, "inside")))
	files["inside"] = files["pxelinux.cfg/default"]
	must(syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	return dir, files
}

func openRoot(t testing.TB, dir string) *os.Root {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return root
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startServer serves srv on a loopback port until the test ends, and
// checks that Serve then returns nil.
func startServer(t testing.TB, srv *Server) string {
	t.Helper()
	if srv.Logger == nil {
		srv.Logger = testLogger(t)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after shutdown; want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Serve still running 30s after shutdown")
		}
	})
	return pc.LocalAddr().String()
}

// fetch gets name with pin/tftp's client, asking for blksize (0: no
// option) and tsize. It returns the data and the tsize the server sent
// (-1 if none).
func fetch(addr, name string, blksize int) ([]byte, int64, error) {
	var buf bytes.Buffer
	tsize, err := fetchInto(&buf, addr, name, blksize)
	return buf.Bytes(), tsize, err
}

// fetchTo is fetch writing to w; it returns the number of bytes written.
func fetchTo(w io.Writer, addr, name string, blksize int) (int64, error) {
	cw := &countingWriter{w: w}
	_, err := fetchInto(cw, addr, name, blksize)
	return cw.n, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// notifyWriter is w that closes first at the first write, and then
// holds that write until hold is closed.
type notifyWriter struct {
	w     io.Writer
	first chan struct{}
	hold  chan struct{}
	once  sync.Once
}

func (n *notifyWriter) Write(p []byte) (int, error) {
	n.once.Do(func() {
		close(n.first)
		<-n.hold
	})
	return n.w.Write(p)
}

func fetchInto(w io.Writer, addr, name string, blksize int) (int64, error) {
	c, err := pin.NewClient(addr)
	if err != nil {
		return 0, err
	}
	c.SetTimeout(2 * time.Second)
	c.SetRetries(3)
	if blksize > 0 {
		c.SetBlockSize(blksize)
	}
	c.RequestTSize(true)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return 0, err
	}
	tsize := int64(-1)
	if it, ok := wt.(pin.IncomingTransfer); ok {
		if n, ok := it.Size(); ok {
			tsize = n
		}
	}
	_, err = wt.WriteTo(w)
	return tsize, err
}

func TestTransfers(t *testing.T) {
	t.Parallel()
	dir, files := testTree(t)
	root := openRoot(t, dir)
	for _, window := range []uint{0, 4} {
		addr := startServer(t, &Server{Handler: FileHandler(root), Anticipate: window})
		for _, blksize := range []int{0, 512, 1468, 65464} {
			for _, n := range testFiles {
				name := fmt.Sprintf("f%d", n)
				t.Run(fmt.Sprintf("anticipate=%d/%s/blksize=%d", window, name, blksize), func(t *testing.T) {
					t.Parallel()
					got, tsize, err := fetch(addr, name, blksize)
					if err != nil {
						t.Fatalf("fetching %s: %v", name, err)
					}
					if !bytes.Equal(got, files[name]) {
						t.Fatalf("fetched %d bytes of %s; want %d, equal", len(got), name, len(files[name]))
					}
					// tsize 0 is not sent back (pin/tftp drops a zero tsize).
					if want := int64(n); n > 0 && tsize != want {
						t.Errorf("tsize %d; want %d", tsize, want)
					}
				})
			}
		}
		got, _, err := fetch(addr, "inside", 1468)
		if err != nil || !bytes.Equal(got, files["inside"]) {
			t.Errorf("fetching a symlink inside the tree: %q, %v; want %q", got, err, files["inside"])
		}
	}
}

// failingReader returns n bytes of data, then an error.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, errors.New("medium error on /dev/sdz")
	}
	k := min(len(p), r.n)
	clear(p[:k])
	r.n -= k
	return k, nil
}

func (r *failingReader) Close() error { return nil }

// TestReadError checks a file that fails mid-transfer: the client gets a
// generic ERROR (or, in anticipation mode, silence: see transferReader),
// the server survives, and the cause is reported.
func TestReadError(t *testing.T) {
	t.Parallel()
	for _, window := range []uint{0, 4} {
		t.Run(fmt.Sprintf("anticipate=%d", window), func(t *testing.T) {
			t.Parallel()
			reports := make(chan Transfer, 1)
			addr := startServer(t, &Server{
				Handler: func(context.Context, string, netip.AddrPort) (io.ReadCloser, int64, error) {
					return &failingReader{n: 5000}, 10000, nil
				},
				Anticipate: window,
				Timeout:    100 * time.Millisecond,
				Retries:    1,
				OnTransfer: func(tr Transfer) { reports <- tr },
			})
			c := dialRaw(t, addr)
			c.send(rrq("f", "octet"), c.server)
			var got int
			for {
				pkt, from := c.recv(time.Second)
				if pkt == nil {
					if window <= 1 {
						t.Fatal("no ERROR")
					}
					break
				}
				if code, msg, ok := errorCode(pkt); ok {
					if window > 1 || code != errNotFound || msg != "server error" {
						t.Errorf("got ERROR %d %q; want code 1 (pin/tftp's) and %q, without anticipation", code, msg, "server error")
					}
					break
				}
				if opcode(pkt) == opDATA {
					got += len(pkt) - 4
					c.send([]byte{0, opACK, pkt[2], pkt[3]}, from)
				}
			}
			if got > 5000 {
				t.Errorf("received %d bytes; the file fails after 5000", got)
			}
			tr := <-reports
			if tr.Err == nil || !strings.Contains(tr.Err.Error(), "medium error") {
				t.Errorf("reported %+v; want the read error", tr)
			}
			if !answers(t, addr) {
				t.Error("server no longer answers")
			}
		})
	}
}

// rawClient speaks TFTP packet by packet, for what pin/tftp's client won't
// do.
type rawClient struct {
	t      testing.TB
	c      *net.UDPConn
	server *net.UDPAddr
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sa, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return &rawClient{t, c, sa}
}

func (r *rawClient) send(pkt []byte, to *net.UDPAddr) {
	r.t.Helper()
	if _, err := r.c.WriteToUDP(pkt, to); err != nil {
		r.t.Fatal(err)
	}
}

// recv returns the next packet, or nil after timeout.
func (r *rawClient) recv(timeout time.Duration) ([]byte, *net.UDPAddr) {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(timeout))
	b := make([]byte, 70000)
	n, from, err := r.c.ReadFromUDP(b)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, nil
		}
		r.t.Fatal(err)
	}
	return b[:n], from
}

// queued reports whether a packet waits on the client's socket, without
// waiting for one.
func (r *rawClient) queued() bool {
	r.t.Helper()
	rc, err := r.c.SyscallConn()
	if err != nil {
		r.t.Fatal(err)
	}
	r.c.SetReadDeadline(time.Time{})
	var peekErr error
	err = rc.Read(func(fd uintptr) bool {
		_, _, peekErr = syscall.Recvfrom(int(fd), make([]byte, 1), syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	if err != nil {
		r.t.Fatal(err)
	}
	if errors.Is(peekErr, syscall.EAGAIN) {
		return false
	}
	if peekErr != nil {
		r.t.Fatal(peekErr)
	}
	return true
}

// answers reports whether a server answers at addr.
func answers(t testing.TB, addr string) bool {
	c := dialRaw(t, addr)
	c.send(rrq("probe", "octet"), c.server)
	pkt, _ := c.recv(100 * time.Millisecond)
	return pkt != nil
}

func rrq(name, mode string, opts ...string) []byte {
	r := request{op: opRRQ, filename: name, mode: mode}
	for i := 0; i+1 < len(opts); i += 2 {
		r.opts = append(r.opts, option{opts[i], opts[i+1]})
	}
	return appendRequest(nil, r)
}

func opcode(pkt []byte) uint16 {
	if len(pkt) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(pkt)
}

// errorCode returns the code and message of an ERROR packet.
func errorCode(pkt []byte) (uint16, string, bool) {
	if opcode(pkt) != opERROR || len(pkt) < 5 {
		return 0, "", false
	}
	return binary.BigEndian.Uint16(pkt[2:]), strings.TrimRight(string(pkt[4:]), "\x00"), true
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	dir, _ := testTree(t)
	files := FileHandler(openRoot(t, dir))
	handler := func(ctx context.Context, path string, peer netip.AddrPort) (io.ReadCloser, int64, error) {
		if path == "broken" {
			return nil, 0, errors.New("disk on fire at /dev/sda")
		}
		return files(ctx, path, peer)
	}
	addr := startServer(t, &Server{Handler: handler})
	tests := map[string]struct {
		pkt  []byte
		code uint16
	}{
		"missing file":          {rrq("nope", "octet"), errNotFound},
		"missing in subdir":     {rrq("pxelinux.cfg/01-aa-bb", "octet", "tsize", "0"), errNotFound},
		"through a file":        {rrq("f1/x", "octet"), errNotFound},
		"dotdot":                {rrq("../secret", "octet"), errAccess},
		"dotdot deep":           {rrq("a/../../secret", "octet"), errAccess},
		"absolute":              {rrq("/etc/passwd", "octet"), errAccess},
		"backslash":             {rrq(`a\b`, "octet"), errAccess},
		"backslash dotdot":      {rrq(`..\secret`, "octet"), errAccess},
		"empty name":            {rrq("", "octet"), errAccess},
		"long name":             {rrq(strings.Repeat("x", MaxPathLength+1), "octet"), errAccess},
		"symlink out":           {rrq("escape", "octet"), errAccess},
		"absolute symlink out":  {rrq("escape-abs", "octet"), errAccess},
		"directory":             {rrq("pxelinux.cfg", "octet"), errAccess},
		"fifo":                  {rrq("fifo", "octet"), errAccess},
		"handler fault":         {rrq("broken", "octet"), errUndefined},
		"write":                 {appendRequest(nil, request{op: opWRQ, filename: "f1", mode: "octet"}), errAccess},
		"mail mode":             {rrq("f1", "mail"), errIllegal},
		"no mode":               {[]byte("\x00\x01f1\x00"), errIllegal},
		"write to escape":       {appendRequest(nil, request{op: opWRQ, filename: "../x", mode: "octet"}), errAccess},
		"netascii missing file": {rrq("nope", "NETASCII"), errNotFound},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := dialRaw(t, addr)
			c.send(tt.pkt, c.server)
			pkt, from := c.recv(5 * time.Second)
			if pkt == nil {
				t.Fatal("no answer")
			}
			code, msg, ok := errorCode(pkt)
			if !ok || code != tt.code {
				t.Fatalf("answer % x; want ERROR code %d", pkt, tt.code)
			}
			if strings.Contains(msg, "fire") || strings.Contains(msg, "/") {
				t.Errorf("error message %q leaks the cause", msg)
			}
			if from.Port == c.server.Port {
				t.Errorf("error sent from the server port %d; want a fresh one", from.Port)
			}
		})
	}
}

// TestGarbageIgnored checks that packets that are not requests get no
// answer.
func TestGarbageIgnored(t *testing.T) {
	t.Parallel()
	addr := startServer(t, &Server{Handler: FileHandler(openRoot(t, t.TempDir()))})
	c := dialRaw(t, addr)
	for _, pkt := range [][]byte{{}, {0}, {0, 3, 0, 1}, {0, 4, 0, 1}, {0, 5, 0, 0, 0}, {0, 6}, {0, 9, 1, 2}, bytes.Repeat([]byte{0, 1}, 800)} {
		c.send(pkt, c.server)
	}
	// The server reads its port in order: the answer to a request sent
	// after the garbage (an ERROR: no such file) comes after any answer
	// to the garbage would have.
	c.send(rrq("missing", "octet"), c.server)
	pkt, _ := c.recv(eventtest.Within)
	if code, _, _ := errorCode(pkt); code != errNotFound {
		t.Fatalf("got % x; want no answer to the garbage, then the ERROR for the missing file", pkt)
	}
	if c.queued() {
		pkt, _ := c.recv(eventtest.Within)
		t.Fatalf("got % x after the ERROR; want nothing more", pkt)
	}
}

// TestOptions checks option negotiation on the wire: names in any case,
// blksize bounds and unknown options.
func TestOptions(t *testing.T) {
	t.Parallel()
	dir, files := testTree(t)
	addr := startServer(t, &Server{Handler: FileHandler(openRoot(t, dir))})
	tests := map[string]struct {
		opts []string
		want map[string]string // the OACK; nil for no OACK (DATA first)
		blk  int
	}{
		"mixed case":      {[]string{"BlkSize", "1024", "TSIZE", "0"}, map[string]string{"blksize": "1024", "tsize": "3000"}, 1024},
		"too large":       {[]string{"blksize", "70000"}, map[string]string{"blksize": "65464"}, 65464},
		"too small":       {[]string{"blksize", "256"}, nil, 512},
		"unknown options": {[]string{"timeout", "5", "windowsize", "4", "multicast", ""}, nil, 512},
		"u-boot":          {[]string{"timeout", "5", "tsize", "0", "blksize", "1468", "windowsize", "1"}, map[string]string{"blksize": "1468", "tsize": "3000"}, 1468},
		"garbage blksize": {[]string{"blksize", "lots", "tsize", "0"}, map[string]string{"tsize": "3000"}, 512},
		"none":            {nil, nil, 512},
	}
	data := files["f"+fmt.Sprint(3*1468)][:3000]
	if err := os.WriteFile(filepath.Join(dir, "f3000"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := dialRaw(t, addr)
			c.send(rrq("f3000", "octet", tt.opts...), c.server)
			pkt, from := c.recv(5 * time.Second)
			got := map[string]string(nil)
			if opcode(pkt) == opOACK {
				got = map[string]string{}
				f := bytes.Split(pkt[2:], []byte{0})
				for i := 0; i+1 < len(f); i += 2 {
					got[string(f[i])] = string(f[i+1])
				}
				c.send([]byte{0, opACK, 0, 0}, from)
				pkt, _ = c.recv(5 * time.Second)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("OACK %v; want %v", got, tt.want)
			}
			// Read the file block by block at the expected size.
			var out []byte
			for block := uint16(1); ; block++ {
				if opcode(pkt) != opDATA || binary.BigEndian.Uint16(pkt[2:]) != block {
					t.Fatalf("got % x; want DATA block %d", pkt[:min(len(pkt), 8)], block)
				}
				out = append(out, pkt[4:]...)
				c.send([]byte{0, opACK, byte(block >> 8), byte(block)}, from)
				if len(pkt)-4 < tt.blk {
					break
				}
				if len(pkt)-4 > tt.blk {
					t.Fatalf("block of %d bytes; want %d", len(pkt)-4, tt.blk)
				}
				pkt, _ = c.recv(5 * time.Second)
			}
			if !bytes.Equal(out, data) {
				t.Errorf("got %d bytes; want the %d of the file", len(out), len(data))
			}
		})
	}
}

func TestOnTransfer(t *testing.T) {
	t.Parallel()
	dir, files := testTree(t)
	reports := make(chan Transfer, 10)
	addr := startServer(t, &Server{
		Handler:    FileHandler(openRoot(t, dir)),
		OnTransfer: func(tr Transfer) { reports <- tr },
	})
	name := fmt.Sprintf("f%d", 3<<20+17)
	if _, _, err := fetch(addr, name, 1468); err != nil {
		t.Fatal(err)
	}
	tr := <-reports
	if tr.Err != nil || tr.Path != name || tr.Bytes != int64(len(files[name])) || tr.Size != tr.Bytes ||
		tr.BlockSize != 1468 || tr.Duration <= 0 || !tr.Peer.Addr().IsLoopback() || tr.Peer.Port() == 0 {
		t.Errorf("OnTransfer got %+v; want a complete transfer of %d bytes at blksize 1468", tr, len(files[name]))
	}
	_, _, err := fetch(addr, "pxelinux.cfg/01-52-54-00-12-34-56", 1468)
	if err == nil {
		t.Fatal("fetching a missing file worked")
	}
	tr = <-reports
	if !errors.Is(tr.Err, fs.ErrNotExist) || tr.Path != "pxelinux.cfg/01-52-54-00-12-34-56" || tr.Bytes != 0 || tr.Size != -1 {
		t.Errorf("OnTransfer got %+v; want a not-found report", tr)
	}
	_, _, err = fetch(addr, "a/../../etc/passwd", 0)
	if err == nil {
		t.Fatal("fetching a/../../etc/passwd worked")
	}
	tr = <-reports
	if !errors.Is(tr.Err, fs.ErrPermission) || tr.Path != "a/../../etc/passwd" {
		t.Errorf("OnTransfer got %+v; want a refusal", tr)
	}
	// A client that gives up mid-transfer.
	c := dialRaw(t, addr)
	c.send(rrq(name, "octet", "blksize", "512"), c.server)
	pkt, from := c.recv(5 * time.Second)
	if opcode(pkt) != opOACK {
		t.Fatalf("got % x; want OACK", pkt)
	}
	c.send([]byte{0, opACK, 0, 0}, from)
	c.recv(5 * time.Second)
	c.send(appendError(nil, 0, "changed my mind"), from)
	tr = <-reports
	if tr.Err == nil || !strings.Contains(tr.Err.Error(), "changed my mind") || tr.Bytes == 0 {
		t.Errorf("OnTransfer got %+v; want a failure carrying the client's message", tr)
	}
}

// deliverFile is a file that records its delivery.
type deliverFile struct {
	*bytes.Reader
	delivered chan<- string
	name      string
	err       error
}

func (f *deliverFile) Close() error { return nil }

func (f *deliverFile) Delivered(context.Context) error {
	f.delivered <- f.name
	return f.err
}

// A file is delivered once the client has acknowledged its last block,
// before OnTransfer; never when the client stops acknowledging (as when
// the request came with another machine's address) or gives up.
func TestDelivered(t *testing.T) {
	t.Parallel()
	delivered := make(chan string, 10)
	reports := make(chan Transfer, 10)
	content := map[string][]byte{
		"small":    []byte("DEFAULT board\n"),
		"multi":    testData(3*512+100, 7),
		"exact":    testData(2*512, 8),
		"refusing": []byte("x"),
	}
	addr := startServer(t, &Server{
		Handler: func(ctx context.Context, path string, peer netip.AddrPort) (io.ReadCloser, int64, error) {
			b, ok := content[path]
			if !ok {
				return nil, 0, fs.ErrNotExist
			}
			f := &deliverFile{Reader: bytes.NewReader(b), delivered: delivered, name: path}
			if path == "refusing" {
				f.err = errors.New("boot store down")
			}
			return f, int64(len(b)), nil
		},
		OnTransfer: func(tr Transfer) { reports <- tr },
		Timeout:    100 * time.Millisecond,
		Retries:    1,
	})
	for _, name := range []string{"small", "multi", "exact"} {
		got, _, err := fetch(addr, name, 0)
		if err != nil || !bytes.Equal(got, content[name]) {
			t.Fatalf("%s: %d bytes, %v", name, len(got), err)
		}
		// Delivered runs before OnTransfer, so it is queued first.
		if d, tr := <-delivered, <-reports; d != name || tr.Err != nil {
			t.Errorf("%s: delivered %q, then transfer %+v", name, d, tr)
		}
	}

	// A client that takes the only block and never acknowledges it.
	c := dialRaw(t, addr)
	c.send(rrq("small", "octet"), c.server)
	if pkt, _ := c.recv(eventtest.Within); opcode(pkt) != opDATA {
		t.Fatalf("got % x; want DATA", pkt)
	}
	if tr := <-reports; tr.Err == nil || tr.Path != "small" {
		t.Errorf("unacknowledged transfer reported %+v; want a failure", tr)
	}
	// A client that acknowledges the first block of two and gives up
	// (from another port: the first transfer's resends go to the first).
	c = dialRaw(t, addr)
	c.send(rrq("multi", "octet"), c.server)
	pkt, from := c.recv(eventtest.Within)
	if opcode(pkt) != opDATA || binary.BigEndian.Uint16(pkt[2:]) != 1 {
		t.Fatalf("got % x; want DATA block 1", pkt[:min(len(pkt), 4)])
	}
	c.send([]byte{0, opACK, 0, 1}, from)
	if pkt, _ := c.recv(eventtest.Within); opcode(pkt) != opDATA || binary.BigEndian.Uint16(pkt[2:]) != 2 {
		t.Fatalf("got % x; want DATA block 2", pkt[:min(len(pkt), 4)])
	}
	c.send(appendError(nil, 0, "changed my mind"), from)
	if tr := <-reports; tr.Err == nil || tr.Path != "multi" {
		t.Errorf("abandoned transfer reported %+v; want a failure", tr)
	}
	select {
	case d := <-delivered:
		t.Errorf("%s delivered without the last acknowledgement", d)
	default:
	}

	// A file that fails its delivery fails its transfer.
	if _, _, err := fetch(addr, "refusing", 0); err != nil {
		t.Fatal(err)
	}
	if d, tr := <-delivered, <-reports; d != "refusing" || tr.Err == nil || !strings.Contains(tr.Err.Error(), "boot store down") {
		t.Errorf("delivered %q, reported %+v; want the delivery's error", d, tr)
	}
}

func TestConcurrentTransfers(t *testing.T) {
	t.Parallel()
	dir, files := testTree(t)
	addr := startServer(t, &Server{Handler: FileHandler(openRoot(t, dir))})
	name := fmt.Sprintf("f%d", 512*4096)
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			blk := []int{512, 1468, 8192, 65464}[i%4]
			got, _, err := fetch(addr, name, blk)
			if err != nil {
				t.Errorf("transfer %d: %v", i, err)
				return
			}
			if !bytes.Equal(got, files[name]) {
				t.Errorf("transfer %d: wrong data", i)
			}
		})
	}
	wg.Wait()
}

// blockingHandler serves "slow" only once release is closed, and counts
// the calls in opened as they begin.
type blockingHandler struct {
	release chan struct{}
	opened  eventtest.Counter
}

func (h *blockingHandler) open(ctx context.Context, path string, _ netip.AddrPort) (io.ReadCloser, int64, error) {
	h.opened.Add()
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	return io.NopCloser(bytes.NewReader(testData(100000, 1))), 100000, nil
}

// dropped waits until the server logs that it dropped a request (drops
// reaching n), and fails the test if the request reaches h instead (its
// calls reaching calls).
func dropped(t *testing.T, drops *eventtest.Counter, n int, h *blockingHandler, calls int) {
	t.Helper()
	select {
	case <-drops.Reached(n):
	case <-h.opened.Reached(calls):
		t.Fatalf("request reached the Handler (%d calls); want it dropped", calls)
	case <-time.After(eventtest.Within):
		t.Fatalf("request neither dropped nor served in %v", eventtest.Within)
	}
}

// resend sends req from c until the server takes it, that is until h has
// been called calls times, and again each time the server logs that it
// dropped it (counted by drops). It is a client retransmitting, with the
// server's decision in place of the client's timer. A passing test needs
// one or two sends; a broken server fails it after 1000 drops rather than
// flooding the log until eventtest.Within.
func resend(t *testing.T, c *rawClient, req []byte, h *blockingHandler, calls int, drops *eventtest.Counter) {
	t.Helper()
	deadline := time.After(eventtest.Within)
	for tries := 1; ; tries++ {
		n := drops.Count()
		c.send(req, c.server)
		select {
		case <-h.opened.Reached(calls):
			return
		case <-drops.Reached(n + 1):
			if tries == 1000 {
				t.Fatalf("request dropped %d times in a row; want it served", tries)
			}
		case <-deadline:
			t.Fatalf("request not served in %v: dropped %d times", eventtest.Within, drops.Count())
		}
	}
}

// TestDuplicateRequest checks that a retransmitted request does not start
// a second transfer while the first runs, and does once it is over.
func TestDuplicateRequest(t *testing.T) {
	t.Parallel()
	h := &blockingHandler{release: make(chan struct{})}
	logs := eventtest.NewLogCounter(testLogger(t).Handler())
	dups := logs.Of("duplicate request dropped")
	reports := make(chan Transfer, 10)
	// The first report waits for resume: the server must have forgotten
	// the request by then.
	resume := make(chan struct{})
	var first, resumed sync.Once
	unblock := func() { resumed.Do(func() { close(resume) }) }
	addr := startServer(t, &Server{
		Handler: h.open,
		Logger:  slog.New(logs),
		Timeout: 100 * time.Millisecond,
		OnTransfer: func(tr Transfer) {
			reports <- tr
			first.Do(func() { <-resume })
		},
	})
	t.Cleanup(unblock) // before the server's shutdown, which waits for it
	c := dialRaw(t, addr)
	req := rrq("slow", "octet", "blksize", "1468", "tsize", "0")
	c.send(req, c.server)
	h.opened.Wait(t, 1, "Handler calls")
	c.send(req, c.server) // the client's RRQ timer fired
	dropped(t, dups, 1, h, 2)
	close(h.release)
	pkt, from := c.recv(5 * time.Second)
	if opcode(pkt) != opOACK {
		t.Fatalf("got % x; want OACK", pkt)
	}
	c.send(appendError(nil, 0, "bye"), from)
	select {
	case <-reports:
	case <-time.After(eventtest.Within):
		t.Fatal("transfer not reported after the client's ERROR")
	}
	// Every transfer calls the Handler first: one call, one transfer.
	if n := h.opened.Count(); n != 1 {
		t.Errorf("Handler called %d times while the transfer ran; want 1", n)
	}
	// The same request again, now the first is over: a new transfer,
	// even while the first is still being reported.
	c.send(req, c.server)
	select {
	case <-h.opened.Reached(2):
	case <-dups.Reached(2):
		t.Fatal("the request of a transfer being reported was dropped as a duplicate")
	case <-time.After(eventtest.Within):
		t.Fatalf("request neither served nor dropped in %v", eventtest.Within)
	}
	unblock()
	// pin/tftp answers the client's ERROR with one of its own, and
	// retransmitted OACKs may be queued: skip what the old port sent.
	for {
		pkt, f := c.recv(5 * time.Second)
		if f != nil && f.Port == from.Port {
			continue
		}
		if opcode(pkt) != opOACK {
			t.Fatalf("got % x from %v; want OACK for a new transfer", pkt, f)
		}
		c.send(appendError(nil, 0, "bye"), f) // rather than time out in the drain
		break
	}
}

// TestMaxConcurrent checks that requests beyond MaxConcurrent are dropped,
// not refused, and served once a slot frees.
func TestMaxConcurrent(t *testing.T) {
	t.Parallel()
	h := &blockingHandler{release: make(chan struct{})}
	logs := eventtest.NewLogCounter(testLogger(t).Handler())
	drops := logs.Of("too many transfers, request dropped")
	reports := make(chan Transfer, 10)
	addr := startServer(t, &Server{
		Handler:       h.open,
		Logger:        slog.New(logs),
		MaxConcurrent: 1,
		Timeout:       100 * time.Millisecond,
		OnTransfer:    func(tr Transfer) { reports <- tr },
	})
	first := dialRaw(t, addr)
	first.send(rrq("slow", "octet"), first.server)
	h.opened.Wait(t, 1, "Handler calls") // the first holds the slot
	second := dialRaw(t, addr)
	second.send(rrq("slow", "octet"), second.server)
	dropped(t, drops, 1, h, 2)
	// A refusal would have been sent before the drop was logged.
	if second.queued() {
		pkt, _ := second.recv(time.Second)
		t.Fatalf("over the limit: got % x; want no answer", pkt[:min(8, len(pkt))])
	}
	close(h.release)
	pkt, from := first.recv(5 * time.Second)
	if opcode(pkt) != opDATA {
		t.Fatalf("first: got % x; want DATA", pkt[:min(8, len(pkt))])
	}
	first.send(appendError(nil, 0, "enough"), from)
	select {
	case <-reports:
	case <-time.After(eventtest.Within):
		t.Fatal("first transfer not reported after the client's ERROR")
	}
	// The second client retries and gets served. The slot frees just
	// after the report, so a retry may still be dropped.
	resend(t, second, rrq("slow", "octet"), h, 2, drops)
	pkt, from = second.recv(5 * time.Second)
	if opcode(pkt) != opDATA {
		t.Fatalf("second: got % x; want DATA", pkt[:min(8, len(pkt))])
	}
	second.send(appendError(nil, 0, "enough"), from) // rather than time out in the drain
}

// TestShutdown checks the drain: a transfer that keeps up finishes, one
// that outlives DrainTimeout is stopped (with an ERROR, or in anticipation
// mode by silence: see transferReader), a vanished client's transfer ends
// by timeout, and Serve returns nil within the documented bound.
func TestShutdown(t *testing.T) {
	t.Parallel()
	for _, window := range []uint{0, 4} {
		t.Run(fmt.Sprintf("anticipate=%d", window), func(t *testing.T) {
			t.Parallel()
			testShutdown(t, window)
		})
	}
}

func testShutdown(t *testing.T, window uint) {
	dir, files := testTree(t)
	reports := make(chan Transfer, 10)
	srv := &Server{
		Handler:      FileHandler(openRoot(t, dir)),
		Logger:       testLogger(t),
		Timeout:      200 * time.Millisecond,
		Retries:      2,
		Anticipate:   window,
		DrainTimeout: 500 * time.Millisecond,
		OnTransfer:   func(tr Transfer) { reports <- tr },
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan time.Time, 1)
	go func() {
		if err := srv.Serve(ctx, pc); err != nil {
			t.Errorf("Serve returned %v; want nil", err)
		}
		done <- time.Now()
	}()

	name := fmt.Sprintf("f%d", 3<<20+17)
	start := func(c *rawClient) *net.UDPAddr {
		c.send(rrq(name, "octet", "blksize", "512"), c.server)
		pkt, from := c.recv(5 * time.Second)
		if opcode(pkt) != opOACK {
			t.Fatalf("got % x; want OACK", pkt)
		}
		c.send([]byte{0, opACK, 0, 0}, from)
		return from
	}
	slow, gone := dialRaw(t, addr), dialRaw(t, addr)
	slowFrom := start(slow)
	start(gone) // and never heard from again

	// A transfer that finishes within the drain, shut down once its first
	// block has arrived. The client holds that block, unacknowledged, until
	// the shutdown has begun: the transfer can't be over before it (it
	// takes 2 ms).
	quick := make(chan error, 1)
	started, hold := make(chan struct{}), make(chan struct{})
	go func() {
		var got bytes.Buffer
		_, err := fetchInto(&notifyWriter{w: &got, first: started, hold: hold}, addr, "f65464", 512)
		if err == nil && !bytes.Equal(got.Bytes(), files["f65464"]) {
			err = errors.New("wrong data")
		}
		quick <- err
	}()
	select {
	case <-started:
	case err := <-quick:
		t.Fatalf("transfer before shutdown: %v; want it running", err)
	case <-time.After(eventtest.Within):
		t.Fatal("transfer before shutdown not started")
	}
	cancel()
	stopped := time.Now()
	close(hold)

	// The slow client acks a block every 10ms (so that a window of 4 is
	// acked within Timeout): it can't finish 6000 blocks within the
	// drain, so it must be stopped.
	var stop string
	for block := uint16(1); stop == "" && time.Since(stopped) < 5*time.Second; {
		pkt, _ := slow.recv(time.Second)
		switch {
		case pkt == nil:
			stop = "silence"
		case opcode(pkt) == opERROR:
			if code, msg, _ := errorCode(pkt); msg != errShutdown.Error() {
				t.Errorf("slow client got ERROR %d %q; want %q", code, msg, errShutdown)
			}
			stop = "error"
		case opcode(pkt) == opDATA && binary.BigEndian.Uint16(pkt[2:]) == block:
			time.Sleep(10 * time.Millisecond)
			slow.send([]byte{0, opACK, byte(block >> 8), byte(block)}, slowFrom)
			block++
		}
	}
	if want := map[bool]string{true: "error", false: "silence"}[window <= 1]; stop != want {
		t.Errorf("slow transfer stopped by %q; want %q", stop, want)
	}
	if err := <-quick; err != nil {
		t.Errorf("transfer running at shutdown: %v; want it finished", err)
	}
	var returned time.Time
	select {
	case returned = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	// DrainTimeout + Timeout×(Retries+1), with slack for a busy machine.
	if took, bound := returned.Sub(stopped), 500*time.Millisecond+3*200*time.Millisecond; took > bound+time.Second {
		t.Errorf("Serve took %v to return; want about %v at most", took, bound)
	}
	close(reports)
	byPath := map[string][]error{}
	for tr := range reports {
		byPath[tr.Path] = append(byPath[tr.Path], tr.Err)
	}
	if errs := byPath["f65464"]; len(errs) != 1 || errs[0] != nil {
		t.Errorf("quick transfer reported %v; want one success", errs)
	}
	if errs := byPath[name]; len(errs) != 2 || !slices.ContainsFunc(errs, func(err error) bool { return errors.Is(err, errShutdown) }) {
		t.Errorf("stopped transfers reported %v; want 2 failures, one for the shutdown", errs)
	}
	if answers(t, addr) {
		t.Error("server answers after shutdown")
	}
}

func TestServeNilHandler(t *testing.T) {
	t.Parallel()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Server{}).Serve(t.Context(), pc); err == nil {
		t.Fatal("Serve with a nil Handler returned nil")
	}
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("socket still open after Serve failed: %v", err)
	}
}

func TestListenAndServe(t *testing.T) {
	t.Parallel()
	dir, files := testTree(t)
	// Find a free port, then let ListenAndServe bind it.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	srv := &Server{Handler: FileHandler(openRoot(t, dir)), Logger: testLogger(t)}
	go func() { done <- srv.ListenAndServe(ctx, addr) }()
	for i := 0; !answers(t, addr); i++ {
		if i == 50 {
			t.Fatal("ListenAndServe does not answer")
		}
	}
	got, _, err := fetch(addr, "f1468", 0)
	if err != nil || !bytes.Equal(got, files["f1468"]) {
		t.Errorf("fetch through ListenAndServe: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ListenAndServe returned %v; want nil", err)
	}
}

// TestIPv6 serves over ::1, where blksize is fitted with the IPv6
// overhead.
func TestIPv6(t *testing.T) {
	t.Parallel()
	pc, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	dir, files := testTree(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	srv := &Server{Handler: FileHandler(openRoot(t, dir)), Logger: testLogger(t)}
	go func() { done <- srv.Serve(ctx, pc) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v", err)
		}
	}()
	name := fmt.Sprintf("f%d", 512*4096)
	got, _, err := fetch(pc.LocalAddr().String(), name, 65464)
	if err != nil || !bytes.Equal(got, files[name]) {
		t.Errorf("fetch over IPv6: %v", err)
	}
}

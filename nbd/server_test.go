package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/rackboot/rackboot/internal/eventtest"
)

// memDevice is an in-memory Device with trim and zeroing, and an optional
// failing range.
type memDevice struct {
	mu       sync.Mutex
	data     []byte
	syncs    int
	failFrom int64 // requests touching [failFrom, failFrom+failLen) fail with EIO
	failLen  int64
}

func newMemDevice(size int) *memDevice {
	d := &memDevice{data: make([]byte, size)}
	for i := range d.data {
		d.data[i] = byte(i * 7)
	}
	return d
}

func (d *memDevice) fails(off, n int64) bool {
	return d.failLen > 0 && off < d.failFrom+d.failLen && d.failFrom < off+n
}

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fails(off, int64(len(p))) {
		return 0, syscall.EIO
	}
	return copy(p, d.data[off:]), nil
}

func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fails(off, int64(len(p))) {
		return 0, syscall.EIO
	}
	return copy(d.data[off:], p), nil
}

func (d *memDevice) Size() int64 { return int64(len(d.data)) }

func (d *memDevice) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.syncs++
	return nil
}

func (d *memDevice) Trim(off, n int64) error { return nil }

func (d *memDevice) WriteZeroes(off, n int64, punch bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+n])
	return nil
}

// mapResolver serves fixed exports; names starting with "secret" are
// refused with a policy error.
type mapResolver map[string]*Export

func (m mapResolver) Open(_ context.Context, name string, _ netip.AddrPort) (*Export, error) {
	if len(name) >= 6 && name[:6] == "secret" {
		return nil, fmt.Errorf("export %q: %w", name, fs.ErrPermission)
	}
	e, ok := m[name]
	if !ok {
		return nil, fmt.Errorf("export %q: %w", name, fs.ErrNotExist)
	}
	c := *e
	return &c, nil
}

func (m mapResolver) List(context.Context, netip.AddrPort) ([]ExportInfo, error) {
	var out []ExportInfo
	for _, n := range []string{"rw", "ro", "bad"} {
		if e, ok := m[n]; ok {
			out = append(out, ExportInfo{Name: n, Description: e.Description})
		}
	}
	return out, nil
}

// startServer serves r on a loopback port until the test ends, and checks
// that Serve then returns cleanly.
func startServer(t *testing.T, srv *Server) string {
	t.Helper()
	if srv.Logger == nil {
		srv.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	addr, shutdown, done := serveLoopback(t, srv)
	t.Cleanup(func() {
		shutdown()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v after shutdown; want nil", err)
		}
	})
	return addr
}

// serveLoopback runs srv.Serve on a loopback port: shutdown starts its
// shutdown (as the end of the test does), and done yields what Serve
// returned.
func serveLoopback(t *testing.T, srv *Server) (addr string, shutdown context.CancelFunc, done <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	return ln.Addr().String(), cancel, errc
}

func testExports() (mapResolver, *memDevice, *memDevice) {
	rw, ro := newMemDevice(1<<20), newMemDevice(1<<20)
	bad := newMemDevice(1 << 20)
	bad.failFrom, bad.failLen = 4096, 4096
	return mapResolver{
		"rw":  {Name: "rw", Description: "writable", Device: rw, MultiConn: true},
		"ro":  {Name: "ro", Description: "read-only", Device: ro, ReadOnly: true, MultiConn: true},
		"bad": {Name: "bad", Device: bad},
	}, rw, ro
}

// rawConn speaks the handshake byte by byte, for the cases our Client
// would never produce.
type rawConn struct {
	t *testing.T
	net.Conn
}

func dialRaw(t *testing.T, addr string, cflags uint32) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := &rawConn{t, c}
	greet := r.read(18)
	if binary.BigEndian.Uint64(greet) != magicNBD || binary.BigEndian.Uint64(greet[8:]) != magicOpt {
		t.Fatalf("greeting % x: not newstyle", greet)
	}
	if f := binary.BigEndian.Uint16(greet[16:]); f != flagFixedNewstyle|flagNoZeroes {
		t.Errorf("handshake flags %#x; want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	r.write(binary.BigEndian.AppendUint32(nil, cflags))
	return r
}

func (r *rawConn) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.Conn, b); err != nil {
		r.t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

func (r *rawConn) write(b []byte) {
	r.t.Helper()
	if _, err := r.Conn.Write(b); err != nil {
		r.t.Fatalf("writing: %v", err)
	}
}

func (r *rawConn) option(opt uint32, data []byte) {
	r.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	r.write(append(b, data...))
}

// reply reads one option reply and checks it answers opt.
func (r *rawConn) reply(opt uint32) (uint32, []byte) {
	r.t.Helper()
	h := r.read(20)
	if binary.BigEndian.Uint64(h) != magicOptReply {
		r.t.Fatalf("option reply magic % x", h[:8])
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		r.t.Fatalf("reply for option %d; want %d", got, opt)
	}
	return binary.BigEndian.Uint32(h[12:]), r.read(int(binary.BigEndian.Uint32(h[16:])))
}

// closed reports whether the server closed the connection.
func (r *rawConn) closed() bool {
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	_, err := r.Conn.Read(b[:])
	return errors.Is(err, io.EOF)
}

func TestHandshakeOptions(t *testing.T) {
	t.Parallel()
	res, _, _ := testExports()
	addr := startServer(t, &Server{Resolver: res})
	goData := func(name string, infos ...uint16) []byte {
		return appendGoRequest(nil, goRequest{name: name, infos: infos})
	}
	tests := map[string]struct {
		opt  uint32
		data []byte
		want uint32
	}{
		"structured reply refused":  {optStructuredReply, nil, repErrUnsup},
		"starttls refused":          {optStartTLS, nil, repErrUnsup},
		"list meta context refused": {optListMetaContext, []byte{0, 0, 0, 0, 0, 0, 0, 0}, repErrUnsup},
		"set meta context refused":  {optSetMetaContext, []byte{0, 0, 0, 0, 0, 0, 0, 0}, repErrUnsup},
		"extended headers refused":  {optExtendedHeaders, nil, repErrUnsup},
		"unknown option":            {4242, []byte("whatever"), repErrUnsup},
		"list with data":            {optList, []byte("x"), repErrInvalid},
		"go truncated":              {optGo, []byte{0, 0, 0, 9, 'r'}, repErrInvalid},
		"go trailing bytes":         {optGo, append(goData("rw"), 0), repErrInvalid},
		"go name with NUL":          {optGo, goData("r\x00w"), repErrInvalid},
		"go unknown export":         {optGo, goData("nope"), repErrUnknown},
		"info forbidden export":     {optInfo, goData("secret-b"), repErrPolicy},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			r := dialRaw(t, addr, flagFixedNewstyle|flagNoZeroes)
			r.option(tt.opt, tt.data)
			if typ, _ := r.reply(tt.opt); typ != tt.want {
				t.Fatalf("reply type %#x; want %#x", typ, tt.want)
			}
			// The refusal leaves the session usable: GO still works.
			r.option(optGo, goData("ro"))
			typ, data := r.reply(optGo)
			if typ != repInfo || binary.BigEndian.Uint16(data) != infoExport {
				t.Fatalf("GO after refusal: reply %#x % x; want NBD_INFO_EXPORT", typ, data)
			}
			if typ, _ := r.reply(optGo); typ != repAck {
				t.Fatalf("GO after refusal: final reply %#x; want ACK", typ)
			}
		})
	}
}

func TestInfoThenGo(t *testing.T) {
	t.Parallel()
	res, _, _ := testExports()
	addr := startServer(t, &Server{Resolver: res})
	r := dialRaw(t, addr, flagFixedNewstyle)
	r.option(optInfo, appendGoRequest(nil, goRequest{name: "ro", infos: []uint16{infoBlockSize, infoName, infoDescription}}))
	got := map[uint16][]byte{}
	for {
		typ, data := r.reply(optInfo)
		if typ == repAck {
			break
		}
		if typ != repInfo {
			t.Fatalf("INFO reply type %#x", typ)
		}
		got[binary.BigEndian.Uint16(data)] = data[2:]
	}
	exp := got[infoExport]
	if len(exp) != 10 || binary.BigEndian.Uint64(exp) != 1<<20 {
		t.Fatalf("NBD_INFO_EXPORT % x; want size 1 MiB", exp)
	}
	if f := binary.BigEndian.Uint16(exp[8:]); f != FlagHasFlags|FlagReadOnly|FlagCanMultiConn {
		t.Errorf("read-only export flags %#x; want HAS_FLAGS|READ_ONLY|CAN_MULTI_CONN", f)
	}
	bs := got[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != MinBlockSize ||
		binary.BigEndian.Uint32(bs[4:]) != PreferredBlockSize || binary.BigEndian.Uint32(bs[8:]) != MaxPayload {
		t.Errorf("NBD_INFO_BLOCK_SIZE % x", bs)
	}
	if string(got[infoName]) != "ro" || string(got[infoDescription]) != "read-only" {
		t.Errorf("name %q, description %q", got[infoName], got[infoDescription])
	}
	// Then EXPORT_NAME without NO_ZEROES: size, flags and 124 zeroes.
	r.option(optExportName, []byte("rw"))
	b := r.read(10 + 124)
	if binary.BigEndian.Uint64(b) != 1<<20 || !bytes.Equal(b[10:], make([]byte, 124)) {
		t.Errorf("EXPORT_NAME reply % x", b[:10])
	}
	want := uint16(FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn)
	if f := binary.BigEndian.Uint16(b[8:]); f != want {
		t.Errorf("writable export flags %#x; want %#x", f, want)
	}
}

func TestHandshakeDisconnects(t *testing.T) {
	t.Parallel()
	res, _, _ := testExports()
	addr := startServer(t, &Server{Resolver: res})
	tests := map[string]struct {
		cflags uint32
		send   func(r *rawConn)
	}{
		"unknown client flag": {cflags: 1 << 5},
		"bad option magic": {cflags: flagFixedNewstyle, send: func(r *rawConn) {
			r.write(bytes.Repeat([]byte{0x55}, 16))
		}},
		"export name unknown": {cflags: flagFixedNewstyle, send: func(r *rawConn) {
			r.option(optExportName, []byte("nope"))
		}},
		"option too long": {cflags: flagFixedNewstyle, send: func(r *rawConn) {
			b := binary.BigEndian.AppendUint64(nil, magicOpt)
			b = binary.BigEndian.AppendUint32(b, optGo)
			r.write(binary.BigEndian.AppendUint32(b, 1<<30))
		}},
		"abort": {cflags: flagFixedNewstyle, send: func(r *rawConn) {
			r.option(optAbort, nil)
			if typ, _ := r.reply(optAbort); typ != repAck {
				r.t.Errorf("ABORT reply %#x; want ACK", typ)
			}
		}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			r := dialRaw(t, addr, tt.cflags)
			if tt.send != nil {
				tt.send(r)
			}
			if !r.closed() {
				t.Error("server kept the connection open")
			}
		})
	}
}

func TestList(t *testing.T) {
	t.Parallel()
	res, _, _ := testExports()
	addr := startServer(t, &Server{Resolver: res})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got, err := List(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	want := []ExportInfo{{"rw", "writable"}, {"ro", "read-only"}, {"bad", ""}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List() = %v; want %v", got, want)
	}
}

func dial(t *testing.T, addr, export string) *Client {
	t.Helper()
	c, err := Dial(t.Context(), addr, export)
	if err != nil {
		t.Fatalf("Dial(%q): %v", export, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func errCode(err error) uint32 {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestTransmission(t *testing.T) {
	t.Parallel()
	res, rw, _ := testExports()
	addr := startServer(t, &Server{Resolver: res})
	c := dial(t, addr, "rw")
	if c.Size != 1<<20 || c.MaxBlock != MaxPayload || c.PreferredBlock != PreferredBlockSize {
		t.Errorf("details %+v", c.ExportDetails)
	}
	p := bytes.Repeat([]byte("rackboot"), 512)
	if _, err := c.WriteAt(p, 1000); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAtFUA(p[:10], 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if _, err := c.ReadAt(got, 1000); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back: %v, equal=%v", err, bytes.Equal(got, p))
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(0, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(1000, 100, true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(got[:100], 1000); err != nil || !bytes.Equal(got[:100], make([]byte, 100)) {
		t.Errorf("zeroed range reads % x, %v", got[:8], err)
	}
	rw.mu.Lock()
	syncs := rw.syncs
	rw.mu.Unlock()
	if syncs < 2 { // FUA and FLUSH
		t.Errorf("device synced %d times; want FUA and FLUSH to sync", syncs)
	}

	errTests := map[string]struct {
		do   func() error
		want uint32
	}{
		"read past end":        {func() error { _, err := c.ReadAt(make([]byte, 10), 1<<20-5); return err }, errInval},
		"write past end":       {func() error { _, err := c.WriteAt(make([]byte, 10), 1<<20-5); return err }, errNoSpc},
		"trim past end":        {func() error { return c.Trim(1<<20, 1) }, errInval},
		"offset overflow":      {func() error { _, err := c.ReadAt(make([]byte, 10), -1); return err }, errInval},
		"read too large":       {func() error { _, err := c.ReadAt(make([]byte, MaxPayload+1), 0); return err }, errInval},
		"write too large":      {func() error { _, err := c.WriteAt(make([]byte, MaxPayload+1), 0); return err }, errInval},
		"unknown command":      {func() error { return c.do(request{typ: 42}, nil, nil) }, errInval},
		"cache not offered":    {func() error { return c.do(request{typ: cmdCache, length: 10}, nil, nil) }, errInval},
		"flag DF not offered":  {func() error { return c.do(request{typ: cmdRead, flags: cmdFlagDF, length: 1}, nil, make([]byte, 1)) }, errInval},
		"no-hole on a write":   {func() error { return c.do(request{typ: cmdWrite, flags: cmdFlagNoHole, length: 1}, []byte{1}, nil) }, errInval},
		"block status refused": {func() error { return c.do(request{typ: cmdBlockStatus, length: 512}, nil, nil) }, errInval},
	}
	for name, tt := range errTests {
		t.Run(name, func(t *testing.T) {
			if got := errCode(tt.do()); got != tt.want {
				t.Errorf("error %d; want %d", got, tt.want)
			}
			// Each failure gets its own reply and the connection stays up.
			if _, err := c.ReadAt(make([]byte, 1), 0); err != nil {
				t.Errorf("connection unusable afterwards: %v", err)
			}
		})
	}

	t.Run("read-only", func(t *testing.T) {
		ro := dial(t, addr, "ro")
		if ro.Flags&FlagReadOnly == 0 {
			t.Fatal("read-only export without READ_ONLY flag")
		}
		if _, err := ro.WriteAt([]byte{1}, 0); errCode(err) != errPerm {
			t.Errorf("write to read-only export: %v; want EPERM", err)
		}
		if err := ro.do(request{typ: cmdTrim, length: 4096}, nil, nil); errCode(err) != errPerm {
			t.Errorf("trim of read-only export: %v; want EPERM", err)
		}
		if err := ro.WriteZeroes(0, 10, false); errCode(err) != errPerm {
			t.Errorf("zeroing read-only export: %v; want EPERM", err)
		}
	})
	t.Run("device error", func(t *testing.T) {
		bad := dial(t, addr, "bad")
		if _, err := bad.ReadAt(make([]byte, 100), 4000); errCode(err) != errIO {
			t.Errorf("read of failing range: %v; want EIO", err)
		}
		if _, err := bad.ReadAt(make([]byte, 100), 0); err != nil {
			t.Errorf("read of good range after EIO: %v", err)
		}
	})
}

// An export whose name is a secret is logged by its LogName, also on the
// warnings of the transmission phase.
func TestLogName(t *testing.T) {
	var logs eventtest.Buffer
	res := mapResolver{"tok3n": {Name: "tok3n", LogName: "board-a@1234", Device: newMemDevice(1 << 20)}}
	addr := startServer(t, &Server{
		Resolver: res,
		Logger:   slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	c, err := Dial(t.Context(), addr, "tok3n")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(make([]byte, 10), 1<<20-5); err == nil {
		t.Fatal("write past the end worked")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), `msg="write beyond end"`) || !strings.Contains(logs.String(), "export=board-a@1234") {
		t.Errorf("want the warning, naming the export by its LogName; log:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "tok3n") {
		t.Errorf("the export's name is logged:\n%s", logs.String())
	}
}

func TestBadRequestMagicDisconnects(t *testing.T) {
	t.Parallel()
	res, _, _ := testExports()
	addr := startServer(t, &Server{Resolver: res})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := Handshake(t.Context(), conn, "rw"); err != nil {
		t.Fatal(err)
	}
	conn.Write(bytes.Repeat([]byte{0xee}, requestHeaderLen))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("after a bad request magic: read %v; want EOF", err)
	}
}

// blockDevice holds every read until release is closed.
type blockDevice struct {
	*memDevice
	started chan struct{}
	release chan struct{}
}

func (d *blockDevice) ReadAt(p []byte, off int64) (int, error) {
	d.started <- struct{}{}
	<-d.release
	return d.memDevice.ReadAt(p, off)
}

// One address gets at most MaxConnectionsPerPeer connections; a slot
// comes back when a connection ends.
func TestMaxConnectionsPerPeer(t *testing.T) {
	t.Parallel()
	res, _, _ := testExports()
	addr := startServer(t, &Server{Resolver: res, MaxConnectionsPerPeer: 2})
	var cs []*Client
	for range 2 {
		c, err := Dial(t.Context(), addr, "rw")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
	}
	if c, err := Dial(t.Context(), addr, "rw"); err == nil {
		c.Close()
		t.Fatal("a third connection from one address was served")
	}
	cs[0].Close()
	// The server frees the slot once it has read the disconnect.
	ctx, cancel := context.WithTimeout(t.Context(), eventtest.Within)
	defer cancel()
	for {
		c, err := Dial(ctx, addr, "rw")
		if err == nil {
			c.Close()
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no slot after a connection ended: %v", err)
		}
	}
}

// startBlocked starts srv, with its limits set by the caller, serving a
// blockDevice of size bytes as export "b" (room for starts reads to
// announce themselves), logging at debug level to the returned counter,
// and returns a connection in transmission to it and the function that
// lets the device's reads go on.
func startBlocked(t *testing.T, size, starts int, srv *Server) (net.Conn, *blockDevice, eventtest.LogCounter, func()) {
	t.Helper()
	dev := &blockDevice{memDevice: newMemDevice(size), started: make(chan struct{}, starts), release: make(chan struct{})}
	logs := eventtest.NewLogCounter(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv.Resolver = mapResolver{"b": {Name: "b", Device: dev}}
	srv.Logger = slog.New(logs)
	addr := startServer(t, srv)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(dev.release) }) }
	t.Cleanup(release) // before the server's: a failed test mustn't hang its drain
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := Handshake(t.Context(), conn, "b"); err != nil {
		t.Fatal(err)
	}
	return conn, dev, logs, release
}

// A connection's requests hold at most MaxBytesInFlight: a request that
// would exceed it isn't read (nor its payload allocated) until earlier
// ones are answered.
func TestMaxBytesInFlight(t *testing.T) {
	t.Parallel()
	conn, dev, logs, release := startBlocked(t, 2*MaxPayload, 2, &Server{MaxBytesInFlight: MaxPayload})
	// Both requests in one write, so that the server sees the second
	// queued and hands the first to a worker.
	b := appendRequest(nil, request{typ: cmdRead, handle: 1, offset: 0, length: MaxPayload})
	b = appendRequest(b, request{typ: cmdRead, handle: 2, offset: 0, length: 4096})
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	<-dev.started
	logs.Of("waiting for bytes in flight").Wait(t, 1, "the second read waiting for the first's bytes")
	select {
	case <-dev.started:
		t.Fatal("the second read reached the device while the first held every byte in flight")
	default:
	}
	release()
	for _, want := range []struct {
		handle uint64
		n      int
	}{{1, MaxPayload}, {2, 4096}} {
		h := make([]byte, replyHeaderLen)
		if _, err := io.ReadFull(conn, h); err != nil {
			t.Fatal(err)
		}
		if got := binary.BigEndian.Uint64(h[8:]); got != want.handle || binary.BigEndian.Uint32(h[4:]) != 0 {
			t.Fatalf("reply % x; want handle %d, no error", h, want.handle)
		}
		if _, err := io.CopyN(io.Discard, conn, int64(want.n)); err != nil {
			t.Fatal(err)
		}
	}
}

// A connection runs at most MaxInFlight requests at once: with that many
// stuck in the device, the next waits for a worker, and runs when one is
// free.
func TestMaxInFlight(t *testing.T) {
	t.Parallel()
	const max = 2
	conn, dev, logs, release := startBlocked(t, 1<<20, max+1, &Server{MaxInFlight: max})
	// All in one write, so that the server sees each one queued behind
	// the one before and hands it to a worker.
	var b []byte
	for h := range uint64(max + 1) {
		b = appendRequest(b, request{typ: cmdRead, handle: h, offset: h * 4096, length: 4096})
	}
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	for range max {
		<-dev.started
	}
	logs.Of("waiting for a worker").Wait(t, 1, "the last read waiting for a worker")
	select {
	case <-dev.started:
		t.Fatalf("%d reads reached the device at once with MaxInFlight %d", max+1, max)
	default:
	}
	release()
	seen := map[uint64]bool{}
	for range max + 1 {
		h := make([]byte, replyHeaderLen)
		if _, err := io.ReadFull(conn, h); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint32(h[4:]) != 0 {
			t.Fatalf("reply % x: an error", h)
		}
		seen[binary.BigEndian.Uint64(h[8:])] = true
		if _, err := io.CopyN(io.Discard, conn, 4096); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != max+1 {
		t.Fatalf("replies to handles %v; want %d distinct", seen, max+1)
	}
}

// A queued reply holds its request's bytes in flight until it is
// written, not just until it is queued: otherwise a client that stops
// reading would let the server read requests, and queue replies, without
// bound.
func TestReplyQueueHoldsBytesInFlight(t *testing.T) {
	t.Parallel()
	const total, w1, w2 = 1 << 20, 4096, 8192
	client, server := net.Pipe() // a write blocks until the peer reads it
	defer client.Close()
	defer server.Close()
	c := &conn{s: &Server{}, nc: server, log: slog.New(slog.DiscardHandler), budget: semaphore.NewWeighted(total)}
	for _, w := range []int64{w1, w2} {
		if !c.budget.TryAcquire(w) {
			t.Fatal("budget exhausted before the test began")
		}
	}
	first := make(chan struct{})
	go func() {
		defer close(first)
		c.send(1, 0, getBuf(w1), w1) // becomes the flusher, and blocks
	}()
	var b [1]byte
	if _, err := io.ReadFull(client, b[:]); err != nil { // the flusher is writing
		t.Fatal(err)
	}
	c.send(2, 0, getBuf(w2), w2) // queued behind the blocked write
	if c.budget.TryAcquire(total - w1 - w2 + 1) {
		t.Fatal("a reply's bytes in flight were released before it was written")
	}
	got := map[uint64]int{}
	for i := range 2 {
		h := make([]byte, replyHeaderLen)
		have := copy(h, b[:1-i]) // the first reply's first byte was read above
		if _, err := io.ReadFull(client, h[have:]); err != nil {
			t.Fatal(err)
		}
		handle := binary.BigEndian.Uint64(h[8:])
		n := map[uint64]int{1: w1, 2: w2}[handle]
		if n == 0 || binary.BigEndian.Uint32(h[4:]) != 0 {
			t.Fatalf("reply % x; want handle 1 or 2, no error", h)
		}
		if _, err := io.CopyN(io.Discard, client, int64(n)); err != nil {
			t.Fatal(err)
		}
		got[handle] = n
	}
	if len(got) != 2 {
		t.Fatalf("replies %v; want one for each handle", got)
	}
	<-first
	if err := c.budget.Acquire(t.Context(), total); err != nil { // every byte comes back
		t.Fatal(err)
	}
}

// Our client refuses lengths the protocol can't carry, and requests after
// Close, rather than sending something else.
func TestClientLimits(t *testing.T) {
	t.Parallel()
	res, _, _ := testExports()
	c, err := Dial(t.Context(), startServer(t, &Server{Resolver: res}), "rw")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(0, 1<<32); err == nil {
		t.Error("a 4 GiB trim was sent")
	}
	if err := c.WriteZeroes(0, -1, false); err == nil {
		t.Error("a negative length was sent")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(make([]byte, 1), 0); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v; want net.ErrClosed", err)
	}
}

// TestShutdownDrains checks that shutdown answers requests already read
// before closing, and syncs writable exports.
func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	dev := &blockDevice{newMemDevice(1 << 20), make(chan struct{}, 4), make(chan struct{})}
	srv := &Server{Resolver: mapResolver{"slow": {Name: "slow", Device: dev}}, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}
	addr, cancel, done := serveLoopback(t, srv)
	c, err := Dial(t.Context(), addr, "slow")
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 4096), 0)
		readErr <- err
	}()
	<-dev.started // the read is in flight
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Serve returned (%v) with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(dev.release)
	if err := <-readErr; err != nil {
		t.Errorf("in-flight read during shutdown: %v; want its data", err)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if dev.syncs == 0 {
		t.Error("shutdown didn't sync the writable export")
	}
	if _, err := c.ReadAt(make([]byte, 1), 0); err == nil {
		t.Error("connection still served after shutdown")
	}
}

// TestShutdownWhileHaggling checks that a client still negotiating when
// the server shuts down gets NBD_REP_ERR_SHUTDOWN for its next option
// (or the ACK of an ABORT), then the connection is closed, and that one
// that sends nothing is closed too.
func TestShutdownWhileHaggling(t *testing.T) {
	t.Parallel()
	res, _, _ := testExports()
	srv := &Server{Resolver: res, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}
	addr, cancel, done := serveLoopback(t, srv)

	opts := []struct {
		name string
		opt  uint32
		data []byte
		want uint32
	}{
		{"list", optList, nil, repErrShutdown},
		{"go", optGo, appendGoRequest(nil, goRequest{name: "ro"}), repErrShutdown},
		{"abort", optAbort, nil, repAck},
	}
	conns := make([]*rawConn, len(opts))
	for i := range opts {
		conns[i] = dialRaw(t, addr, flagFixedNewstyle|flagNoZeroes)
		// An option answered before the shutdown: the server is
		// haggling with this client.
		conns[i].option(optList, nil)
		for {
			typ, _ := conns[i].reply(optList)
			if typ == repAck {
				break
			}
		}
	}
	silent := dialRaw(t, addr, flagFixedNewstyle|flagNoZeroes)
	cancel()
	for i, o := range opts {
		c := conns[i]
		c.option(o.opt, o.data)
		if typ, msg := c.reply(o.opt); typ != o.want {
			t.Errorf("%s after shutdown: reply %#x (%q); want %#x", o.name, typ, msg, o.want)
		}
		if !c.closed() {
			t.Errorf("%s after shutdown: connection left open", o.name)
		}
	}
	if !silent.closed() {
		t.Error("silent haggling client: connection left open after shutdown")
	}
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// TestSimultaneousConnects is a rack powering on at once: every one of 128
// connections made together gets its greeting.
func TestSimultaneousConnects(t *testing.T) {
	t.Parallel()
	res, _, _ := testExports()
	addr := startServer(t, &Server{Resolver: res, Logger: slog.New(slog.DiscardHandler)})
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 128)
	for range 128 {
		wg.Go(func() {
			<-start
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			g := make([]byte, 18)
			if _, err := io.ReadFull(conn, g); err != nil {
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("connection without greeting: %v", err)
	}
}

// stalledClient connects to srv, serving an 8 MiB memDevice as export
// "m", with a small receive buffer, and asks for all of it in 1 MiB
// reads: far more than the socket buffers hold. It reads the first reply
// header, so that the server is known to be answering, and nothing more.
func stalledClient(t *testing.T, srv *Server) (net.Conn, eventtest.LogCounter, context.CancelFunc, <-chan error) {
	t.Helper()
	logs := eventtest.NewLogCounter(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv.Resolver = mapResolver{"m": {Name: "m", Device: newMemDevice(8 << 20)}}
	srv.Logger = slog.New(logs)
	addr, cancel, done := serveLoopback(t, srv)
	conn := dialSlow(t, addr, "m")
	var b []byte
	for i := range 8 {
		b = appendRequest(b, request{typ: cmdRead, handle: uint64(i), offset: uint64(i) << 20, length: 1 << 20})
	}
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, replyHeaderLen)); err != nil {
		t.Fatal(err)
	}
	return conn, logs, cancel, done
}

// dialSlow connects to export name at addr with a small receive buffer,
// so that a reply of a few MiB can't leave the server until the client
// reads it.
func dialSlow(t *testing.T, addr, name string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return serr
	}}
	conn, err := d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := Handshake(t.Context(), conn, name); err != nil {
		t.Fatal(err)
	}
	return conn
}

// writeSignal is a Device that reports each write on wrote.
type writeSignal struct {
	Device
	wrote chan struct{}
}

func (d *writeSignal) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.Device.WriteAt(p, off)
	d.wrote <- struct{}{}
	return n, err
}

// TestLargeReadHandedOff: once a client has pipelined, its large reads go
// to a worker even when nothing else is pending: while such a read's
// reply waits for the client to read, the server still reads and
// carries out the client's next requests.
func TestLargeReadHandedOff(t *testing.T) {
	t.Parallel()
	block := &blockDevice{newMemDevice(16 << 20), make(chan struct{}, 3), make(chan struct{})}
	dev := &writeSignal{block, make(chan struct{}, 1)}
	addr := startServer(t, &Server{Resolver: mapResolver{"m": {Name: "m", Device: dev}}})
	conn := dialSlow(t, addr, "m")
	// Two small reads at once: the device holds both, so the second
	// came while the first was pending.
	b := appendRequest(nil, request{typ: cmdRead, handle: 1, length: 4096})
	b = appendRequest(b, request{typ: cmdRead, handle: 2, length: 4096})
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	<-block.started
	<-block.started
	close(block.release)
	if _, err := io.ReadFull(conn, make([]byte, 2*(replyHeaderLen+4096))); err != nil {
		t.Fatal(err)
	}
	// Then a large read, alone, whose reply can't fit the buffers.
	if _, err := conn.Write(appendRequest(nil, request{typ: cmdRead, handle: 3, length: 16 << 20})); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, replyHeaderLen)); err != nil {
		t.Fatal(err)
	}
	w := appendRequest(nil, request{typ: cmdWrite, handle: 4, offset: 4096, length: 4096})
	if _, err := conn.Write(append(w, make([]byte, 4096)...)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dev.wrote:
	case <-time.After(eventtest.Within):
		t.Fatal("a write sent after a large read waited for the read's reply to be taken")
	}
}

// TestWriteTimeout: a reply that a client doesn't read within
// WriteTimeout ends the connection.
func TestWriteTimeout(t *testing.T) {
	t.Parallel()
	conn, logs, _, _ := stalledClient(t, &Server{WriteTimeout: 50 * time.Millisecond})
	logs.Of("sending reply").Wait(t, 1, "a reply timing out")
	conn.SetReadDeadline(time.Now().Add(eventtest.Within))
	n, err := io.Copy(io.Discard, conn)
	if os.IsTimeout(err) {
		t.Fatal("the connection is still open after its write timed out")
	}
	if n >= 8<<20 {
		t.Fatalf("the client read all %d bytes after the write timed out", n)
	}
}

// TestDrainTimeout: shutdown ends, after DrainTimeout, a connection whose
// reply is stuck on a client that doesn't read.
func TestDrainTimeout(t *testing.T) {
	t.Parallel()
	_, _, cancel, done := stalledClient(t, &Server{WriteTimeout: time.Hour, DrainTimeout: 50 * time.Millisecond})
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Serve: %v, want the drain's deadline error", err)
		}
	case <-time.After(eventtest.Within):
		t.Fatal("Serve still draining a stuck connection well after DrainTimeout")
	}
}

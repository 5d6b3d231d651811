package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"
)

// ExportDetails is what the server told a client about the export it chose.
type ExportDetails struct {
	Name  string
	Size  int64
	Flags uint16
	// Block size constraints, zero when the server sent none.
	MinBlock, PreferredBlock, MaxBlock uint32
}

// Error is a failed option or request as the server reported it.
type Error struct {
	// Op is the option or command that failed.
	Op string
	// Code is the NBD error value (for commands) or option reply type.
	Code uint32
	// Message is the server's text, if it sent one.
	Message string
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd %s: error %#x: %s", e.Op, e.Code, e.Message)
	}
	return fmt.Sprintf("nbd %s: error %d", e.Op, e.Code)
}

// optionClient speaks the handshake phase.
type optionClient struct {
	conn     net.Conn
	br       *bufio.Reader
	noZeroes bool
}

// startHandshake reads the greeting and sends the client flags.
func startHandshake(ctx context.Context, conn net.Conn) (*optionClient, func(), error) {
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(aLongTimeAgo) })
	done := func() {
		stop()
		conn.SetDeadline(time.Time{})
	}
	oc := &optionClient{conn: conn, br: bufio.NewReaderSize(conn, 4096)}
	var g [18]byte
	if _, err := io.ReadFull(oc.br, g[:]); err != nil {
		done()
		return nil, nil, fmt.Errorf("reading NBD greeting: %w", err)
	}
	if binary.BigEndian.Uint64(g[0:]) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicOpt {
		done()
		return nil, nil, fmt.Errorf("NBD greeting: not a newstyle server: %w", errMalformed)
	}
	sflags := binary.BigEndian.Uint16(g[16:])
	if sflags&flagFixedNewstyle == 0 {
		done()
		return nil, nil, fmt.Errorf("NBD greeting: server lacks fixed newstyle: %w", errMalformed)
	}
	cflags := uint32(flagFixedNewstyle)
	if sflags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
		oc.noZeroes = true
	}
	if _, err := conn.Write(binary.BigEndian.AppendUint32(nil, cflags)); err != nil {
		done()
		return nil, nil, fmt.Errorf("sending client flags: %w", err)
	}
	return oc, done, nil
}

func (oc *optionClient) send(opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	_, err := oc.conn.Write(b)
	return err
}

// recv reads one option reply for opt.
func (oc *optionClient) recv(opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(oc.br, h[:]); err != nil {
		return 0, nil, fmt.Errorf("reading %s reply: %w", optionName(opt), err)
	}
	if binary.BigEndian.Uint64(h[0:]) != magicOptReply {
		return 0, nil, fmt.Errorf("%s reply magic: %w", optionName(opt), errMalformed)
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		return 0, nil, fmt.Errorf("reply to %s for %s: %w", optionName(got), optionName(opt), errMalformed)
	}
	typ := binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptionLength {
		return 0, nil, fmt.Errorf("%s reply of %d bytes: %w", optionName(opt), n, errMalformed)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(oc.br, data); err != nil {
		return 0, nil, fmt.Errorf("reading %s reply: %w", optionName(opt), err)
	}
	if typ&repFlagError != 0 {
		return typ, nil, &Error{Op: optionName(opt), Code: typ, Message: string(data)}
	}
	return typ, data, nil
}

// Handshake negotiates export on conn with NBD_OPT_GO and leaves conn in the
// transmission phase, ready for NewClient or for handing to the kernel. ctx
// bounds the handshake only.
func Handshake(ctx context.Context, conn net.Conn, export string) (ExportDetails, error) {
	oc, done, err := startHandshake(ctx, conn)
	if err != nil {
		return ExportDetails{}, err
	}
	defer done()
	req := goRequest{name: export, infos: []uint16{infoBlockSize}}
	if err := oc.send(optGo, appendGoRequest(nil, req)); err != nil {
		return ExportDetails{}, fmt.Errorf("sending GO: %w", err)
	}
	d := ExportDetails{Name: export}
	gotExport := false
	for {
		typ, data, err := oc.recv(optGo)
		if err != nil {
			return ExportDetails{}, err
		}
		switch typ {
		case repAck:
			if !gotExport {
				return ExportDetails{}, fmt.Errorf("GO acknowledged without export info: %w", errMalformed)
			}
			return d, nil
		case repInfo:
			if len(data) < 2 {
				return ExportDetails{}, fmt.Errorf("short INFO reply: %w", errMalformed)
			}
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return ExportDetails{}, fmt.Errorf("NBD_INFO_EXPORT of %d bytes: %w", len(data), errMalformed)
				}
				d.Size = int64(binary.BigEndian.Uint64(data[2:]))
				d.Flags = binary.BigEndian.Uint16(data[10:])
				gotExport = true
			case infoBlockSize:
				if len(data) != 14 {
					return ExportDetails{}, fmt.Errorf("NBD_INFO_BLOCK_SIZE of %d bytes: %w", len(data), errMalformed)
				}
				d.MinBlock = binary.BigEndian.Uint32(data[2:])
				d.PreferredBlock = binary.BigEndian.Uint32(data[6:])
				d.MaxBlock = binary.BigEndian.Uint32(data[10:])
			}
		}
	}
}

// List asks the server for its exports with NBD_OPT_LIST and ends the
// session with NBD_OPT_ABORT.
func List(ctx context.Context, conn net.Conn) ([]ExportInfo, error) {
	oc, done, err := startHandshake(ctx, conn)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := oc.send(optList, nil); err != nil {
		return nil, fmt.Errorf("sending LIST: %w", err)
	}
	var out []ExportInfo
	for {
		typ, data, err := oc.recv(optList)
		if err != nil {
			return nil, err
		}
		if typ == repAck {
			break
		}
		if typ != repServer || len(data) < 4 {
			return nil, fmt.Errorf("LIST reply type %d: %w", typ, errMalformed)
		}
		n := binary.BigEndian.Uint32(data)
		if uint64(n) > uint64(len(data)-4) {
			return nil, fmt.Errorf("LIST name length %d: %w", n, errMalformed)
		}
		out = append(out, ExportInfo{Name: string(data[4 : 4+n]), Description: string(data[4+n:])})
	}
	oc.send(optAbort, nil)
	oc.recv(optAbort)
	return out, nil
}

// Client is a transmission-phase NBD client with pipelining: its methods
// are safe for concurrent use and many requests can be outstanding at once.
// It uses simple replies only.
type Client struct {
	ExportDetails

	conn net.Conn
	wmu  sync.Mutex

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*call
	err     error // set once the connection is broken
	closing bool  // Close was called: no new requests
	calls   sync.WaitGroup
	done    chan struct{}
}

type call struct {
	buf  []byte // read destination
	errc chan error
}

// Dial connects to addr (host:port), negotiates export and returns a Client.
func Dial(ctx context.Context, addr, export string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to NBD server: %w", err)
	}
	details, err := Handshake(ctx, conn, export)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return NewClient(conn, details), nil
}

// NewClient starts a Client on conn, which Handshake left in the
// transmission phase.
func NewClient(conn net.Conn, d ExportDetails) *Client {
	c := &Client{ExportDetails: d, conn: conn, pending: make(map[uint64]*call), done: make(chan struct{})}
	go c.readLoop()
	return c
}

func (c *Client) readLoop() {
	defer close(c.done)
	br := bufio.NewReaderSize(c.conn, 256<<10)
	var h [replyHeaderLen]byte
	fail := func(err error) {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		for h, cl := range c.pending {
			cl.errc <- c.err
			delete(c.pending, h)
		}
		c.mu.Unlock()
		c.conn.Close()
	}
	for {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			fail(fmt.Errorf("reading NBD reply: %w", err))
			return
		}
		if binary.BigEndian.Uint32(h[0:]) != magicSimpleReply {
			fail(fmt.Errorf("NBD reply magic: %w", errMalformed))
			return
		}
		errno := binary.BigEndian.Uint32(h[4:])
		handle := binary.BigEndian.Uint64(h[8:])
		c.mu.Lock()
		cl := c.pending[handle]
		delete(c.pending, handle)
		c.mu.Unlock()
		if cl == nil {
			fail(fmt.Errorf("NBD reply for unknown handle %d: %w", handle, errMalformed))
			return
		}
		if errno != 0 {
			cl.errc <- &Error{Op: "request", Code: errno}
			continue
		}
		if cl.buf != nil {
			if _, err := io.ReadFull(br, cl.buf); err != nil {
				cl.errc <- err
				fail(fmt.Errorf("reading NBD read data: %w", err))
				return
			}
		}
		cl.errc <- nil
	}
}

// do sends one request with an optional payload and waits for its reply;
// dst receives read data.
func (c *Client) do(r request, payload, dst []byte) error {
	cl := &call{buf: dst, errc: make(chan error, 1)}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return fmt.Errorf("NBD client: %w", net.ErrClosed)
	}
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.calls.Add(1)
	defer c.calls.Done()
	c.next++
	r.handle = c.next
	c.pending[r.handle] = cl
	c.mu.Unlock()

	c.wmu.Lock()
	bufs := net.Buffers{appendRequest(make([]byte, 0, requestHeaderLen), r)}
	if len(payload) > 0 {
		bufs = append(bufs, payload)
	}
	_, err := bufs.WriteTo(c.conn)
	c.wmu.Unlock()
	if err != nil {
		c.conn.Close() // the reader fails every pending call
	}
	if err := <-cl.errc; err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Op = commandName(r.typ)
		}
		return err
	}
	return nil
}

// length checks that n fits a request's 32-bit length.
func length(n int64) (uint32, error) {
	if n < 0 || n > math.MaxUint32 {
		return 0, fmt.Errorf("NBD request of %d bytes: out of range", n)
	}
	return uint32(n), nil
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	n, err := length(int64(len(p)))
	if err != nil {
		return 0, err
	}
	if err := c.do(request{typ: cmdRead, offset: uint64(off), length: n}, nil, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt writes p at off.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	n, err := length(int64(len(p)))
	if err != nil {
		return 0, err
	}
	if err := c.do(request{typ: cmdWrite, offset: uint64(off), length: n}, p, nil); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAtFUA writes p at off with NBD_CMD_FLAG_FUA: the reply comes once
// the data is durable.
func (c *Client) WriteAtFUA(p []byte, off int64) error {
	n, err := length(int64(len(p)))
	if err != nil {
		return err
	}
	return c.do(request{typ: cmdWrite, flags: cmdFlagFUA, offset: uint64(off), length: n}, p, nil)
}

// Flush asks the server to make every completed write durable.
func (c *Client) Flush() error {
	return c.do(request{typ: cmdFlush}, nil, nil)
}

// Trim tells the server a range is no longer needed.
func (c *Client) Trim(off, n int64) error {
	l, err := length(n)
	if err != nil {
		return err
	}
	return c.do(request{typ: cmdTrim, offset: uint64(off), length: l}, nil, nil)
}

// WriteZeroes zeroes a range; noHole asks the server to keep it allocated.
func (c *Client) WriteZeroes(off, n int64, noHole bool) error {
	l, err := length(n)
	if err != nil {
		return err
	}
	var f uint16
	if noHole {
		f = cmdFlagNoHole
	}
	return c.do(request{typ: cmdWriteZeroes, flags: f, offset: uint64(off), length: l}, nil, nil)
}

// Close waits for outstanding requests to be answered, sends NBD_CMD_DISC
// and closes the connection. Requests made after Close fail.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.calls.Wait() // the protocol allows nothing after DISC
	c.wmu.Lock()
	_, err := c.conn.Write(appendRequest(nil, request{typ: cmdDisc}))
	c.wmu.Unlock()
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	<-c.done
	c.conn.Close()
	return err
}

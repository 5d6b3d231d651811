package nbd

import (
	"bufio"
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
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/rackboot/rackboot/internal/rawio"
)

// Defaults for the zero values of Server's fields.
const (
	// DefaultMaxConnections bounds the connections served at once; further
	// connections are closed right after accept.
	DefaultMaxConnections = 1024
	// DefaultMaxInFlight bounds the requests of one connection being
	// handled at once; the server stops reading from a connection that has
	// this many outstanding and lets TCP push back.
	DefaultMaxInFlight = 128
	// DefaultMaxBytesInFlight bounds the bytes of one connection's
	// requests being handled at once (their lengths): with a client
	// that stops reading replies, what the connection can pin in
	// memory. It is twice MaxPayload, so that the largest requests
	// still overlap.
	DefaultMaxBytesInFlight = 2 * MaxPayload
	// DefaultHandshakeTimeout bounds the whole option haggling phase.
	DefaultHandshakeTimeout = 30 * time.Second
	// DefaultWriteTimeout bounds the sending of one reply.
	DefaultWriteTimeout = 60 * time.Second
	// DefaultDrainTimeout bounds how long Serve waits, once its context is
	// done, for in-flight requests to finish and write layers to sync.
	DefaultDrainTimeout = 30 * time.Second
)

// Block sizes advertised in NBD_INFO_BLOCK_SIZE.
const (
	// MinBlockSize is the smallest I/O the server handles without penalty:
	// any byte range works.
	MinBlockSize = 1
	// PreferredBlockSize is the I/O size that avoids read-modify-write in
	// copy-on-write layers.
	PreferredBlockSize = 4096
	// MaxPayload is the largest READ or WRITE the server accepts; larger
	// requests get EINVAL (a write's payload is read and dropped, so the
	// connection stays in sync).
	MaxPayload = 32 << 20
)

// Server serves NBD exports chosen by a Resolver. The zero value with a
// Resolver set is ready to use. A Server must not be copied after first use.
//
// # Concurrency
//
// Each connection's requests are handled concurrently (up to MaxInFlight at
// a time) and answered in completion order, matched by handle, as the
// protocol allows. A failed request gets its own error reply; only protocol
// violations that make the stream unreadable (a bad request magic) end a
// connection.
//
// # Shutdown
//
// When the context passed to Serve is done, the server stops accepting,
// stops reading new requests on every connection, finishes the requests
// already read, syncs each writable export, releases it and closes the
// connection, like http.Server.Shutdown. A client still haggling over
// options has a second to send its next one, which gets
// NBD_REP_ERR_SHUTDOWN (NBD_OPT_ABORT gets its ACK). If all that takes
// longer than DrainTimeout the remaining connections are closed and Serve
// returns an error wrapping context.DeadlineExceeded.
type Server struct {
	// Resolver chooses exports. Required.
	Resolver Resolver
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// MaxConnections bounds concurrent connections; 0 means
	// DefaultMaxConnections.
	MaxConnections int
	// MaxConnectionsPerPeer bounds the concurrent connections from one
	// IP address, so that one client can't take every connection slot;
	// 0 means no bound.
	MaxConnectionsPerPeer int
	// MaxInFlight bounds concurrent requests per connection; 0 means
	// DefaultMaxInFlight.
	MaxInFlight int
	// MaxBytesInFlight bounds the total length of a connection's
	// requests being handled at once; 0 means DefaultMaxBytesInFlight.
	// Values below MaxPayload are raised to it.
	MaxBytesInFlight int
	// HandshakeTimeout bounds option haggling; 0 means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds the sending of one reply; 0 means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// DrainTimeout bounds the shutdown drain; 0 means DefaultDrainTimeout.
	DrainTimeout time.Duration

	mu      sync.Mutex
	conns   map[*conn]struct{}
	perPeer map[netip.Addr]int
	wg      sync.WaitGroup
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// ListenAndServe listens on the TCP address addr and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for NBD: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln until ctx is done, then drains as
// described in the Shutdown section and returns nil. It closes ln. It
// returns an error if accepting fails for a reason other than shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Resolver == nil {
		ln.Close()
		return errors.New("nbd: Server.Resolver is nil")
	}
	log := s.logger()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	slots := make(chan struct{}, orDefault(s.MaxConnections, DefaultMaxConnections))
	var serveErr error
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if isTemporary(err) {
				// Out of file descriptors and the like: wait and retry,
				// as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Error("accept failed, retrying", "err", err, "dur", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
				}
				continue
			}
			serveErr = fmt.Errorf("accepting NBD connections: %w", err)
			break
		}
		backoff = 0
		select {
		case slots <- struct{}{}:
		default:
			log.Warn("too many connections, closing new one", "peer", nc.RemoteAddr().String())
			nc.Close()
			continue
		}
		c := s.newConn(nc)
		if !s.track(c, true) {
			<-slots
			log.Warn("too many connections from one address, closing new one", "peer", c.peer.String(),
				"max", s.MaxConnectionsPerPeer)
			nc.Close()
			continue
		}
		s.wg.Go(func() {
			defer func() { <-slots }()
			defer s.track(c, false)
			c.serve(ctx)
		})
	}
	ln.Close()
	return errors.Join(serveErr, s.drain())
}

// isTemporary reports accept errors worth retrying.
func isTemporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}

// track adds c to the connections being served, or removes it. Adding
// fails when its peer already has MaxConnectionsPerPeer.
func (s *Server) track(c *conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
		s.perPeer = make(map[netip.Addr]int)
	}
	ip := c.peer.Addr()
	if !add {
		delete(s.conns, c)
		if s.perPeer[ip]--; s.perPeer[ip] <= 0 {
			delete(s.perPeer, ip)
		}
		return true
	}
	if s.MaxConnectionsPerPeer > 0 && s.perPeer[ip] >= s.MaxConnectionsPerPeer {
		return false
	}
	s.conns[c] = struct{}{}
	s.perPeer[ip]++
	return true
}

// drain waits for every connection to finish, closing the stragglers after
// DrainTimeout.
func (s *Server) drain() error {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(orDefault(s.DrainTimeout, DefaultDrainTimeout))
	defer timer.Stop()
	select {
	case <-done:
		return nil
	case <-timer.C:
	}
	s.mu.Lock()
	n := len(s.conns)
	for c := range s.conns {
		c.abort()
	}
	s.mu.Unlock()
	<-done
	return fmt.Errorf("draining NBD connections: %d still busy: %w", n, context.DeadlineExceeded)
}

// aLongTimeAgo is a deadline in the past, used to interrupt blocked reads.
var aLongTimeAgo = time.Unix(1, 0)

// shutdownGrace is how long a client haggling over options when the
// server shuts down has to send its next option, which then gets
// NBD_REP_ERR_SHUTDOWN instead of a dropped connection.
const shutdownGrace = time.Second

// conn is one client connection.
type conn struct {
	s    *Server
	nc   net.Conn
	peer netip.AddrPort
	log  *slog.Logger
	br   *bufio.Reader // reads c (see Read)

	// sock is nc detached from the network poller for transmission, nil
	// before it or where that isn't possible (see detach).
	sock atomic.Pointer[rawio.Sock]

	// haggling is set during option haggling, whose end shutdown
	// postpones by up to shutdownGrace (see handshake); hagglingUntil
	// is the handshake's deadline.
	haggling      atomic.Bool
	hagglingUntil time.Time

	wmu    sync.Mutex // serialises writes to the socket
	broken atomic.Bool

	// Replies wait in a queue, and whoever finds no flush under way
	// writes the whole queue with one writev: at queue depth 32 a
	// system call (and a TCP segment, and a wake-up of the client) per
	// reply was a third of the server's CPU. An entry keeps its data and
	// its request's share of the bytes in flight until it is written.
	qmu      sync.Mutex
	queue    []queuedReply
	flushing bool                // a goroutine is flushing the queue; under qmu
	spare    []queuedReply       // the flusher's other queue
	iov      [][]byte            // the flusher's scratch
	budget   *semaphore.Weighted // bytes in flight; transmit sets it
}

// queuedReply is a reply waiting in conn.queue.
type queuedReply struct {
	hdr    [replyHeaderLen]byte
	data   []byte // a pool buffer, or nil
	weight int64  // released from conn.budget once written
}

func peerAddr(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// newConn wraps an accepted connection.
func (s *Server) newConn(nc net.Conn) *conn {
	peer := peerAddr(nc.RemoteAddr())
	c := &conn{
		s:    s,
		nc:   nc,
		peer: peer,
		log:  s.logger().With("peer", peer.String()),
	}
	c.br = bufio.NewReaderSize(c, 64<<10)
	return c
}

// serve runs the connection until it ends, and closes it.
func (c *conn) serve(ctx context.Context) {
	nc, peer := c.nc, c.peer
	defer func() {
		nc.Close()
		if sk := c.sock.Load(); sk != nil {
			sk.Close()
		}
	}()
	// Shutdown interrupts whatever read is blocked; writes go on so that
	// in-flight requests still get their replies. A client haggling over
	// options gets a moment to send its next one, which is answered
	// with NBD_REP_ERR_SHUTDOWN, as the protocol asks. (A handshake that
	// ends just then may find that deadline on its first request read,
	// and drain up to shutdownGrace later.)
	stop := context.AfterFunc(ctx, func() {
		if c.haggling.Load() {
			d := time.Now().Add(shutdownGrace)
			if c.hagglingUntil.Before(d) {
				d = c.hagglingUntil
			}
			nc.SetReadDeadline(d)
			return
		}
		c.closeRead()
	})
	defer stop()

	exp, err := c.handshake(ctx, peer)
	if err != nil {
		c.log.Debug("handshake ended", "err", err)
		return
	}
	if exp == nil {
		return
	}
	logName := exp.LogName
	if logName == "" {
		logName = exp.Name
	}
	log := c.log.With("export", logName)
	c.log = log
	log.Debug("export opened")
	c.transmit(ctx, exp)
	if exp.Release != nil {
		exp.Release()
	}
	log.Debug("export closed")
}

// handshake runs fixed-newstyle option haggling. It returns the export
// chosen with NBD_OPT_GO or NBD_OPT_EXPORT_NAME, or nil after
// NBD_OPT_ABORT, or an error when the connection must be dropped.
func (c *conn) handshake(ctx context.Context, peer netip.AddrPort) (*Export, error) {
	c.hagglingUntil = time.Now().Add(orDefault(c.s.HandshakeTimeout, DefaultHandshakeTimeout))
	c.nc.SetDeadline(c.hagglingUntil)
	c.haggling.Store(true)
	defer c.haggling.Store(false)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(c.nc, 4096)
	var greet [18]byte
	binary.BigEndian.PutUint64(greet[0:], magicNBD)
	binary.BigEndian.PutUint64(greet[8:], magicOpt)
	binary.BigEndian.PutUint16(greet[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(greet[:]); err != nil {
		return nil, fmt.Errorf("sending greeting: %w", err)
	}
	var b [16]byte
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(b[:4])
	if cflags&^clientFlagsAllowed != 0 {
		c.log.Warn("unknown client flags", "flags", cflags)
		return nil, fmt.Errorf("client flags %#x: %w", cflags, errMalformed)
	}
	noZeroes := cflags&flagNoZeroes != 0

	reply := func(opt, typ uint32, data ...[]byte) error {
		var h [20]byte
		binary.BigEndian.PutUint64(h[0:], magicOptReply)
		binary.BigEndian.PutUint32(h[8:], opt)
		binary.BigEndian.PutUint32(h[12:], typ)
		n := 0
		for _, d := range data {
			n += len(d)
		}
		binary.BigEndian.PutUint32(h[16:], uint32(n))
		bw.Write(h[:])
		for _, d := range data {
			bw.Write(d)
		}
		return bw.Flush()
	}
	errReply := func(opt, typ uint32, msg string) error {
		return reply(opt, typ, []byte(msg))
	}

	for n := 0; ; n++ {
		if n == 256 {
			return nil, errors.New("too many options")
		}
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return nil, fmt.Errorf("reading option: %w", err)
		}
		if m := binary.BigEndian.Uint64(b[0:8]); m != magicOpt {
			c.log.Warn("bad option magic", "magic", m)
			return nil, fmt.Errorf("option magic %#x: %w", m, errMalformed)
		}
		opt := binary.BigEndian.Uint32(b[8:12])
		length := binary.BigEndian.Uint32(b[12:16])
		if length > maxOptionLength {
			c.log.Warn("option too long", "option", optionName(opt), "len", length)
			return nil, fmt.Errorf("%s of %d bytes: %w", optionName(opt), length, errMalformed)
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, fmt.Errorf("reading %s data: %w", optionName(opt), err)
		}
		if ctx.Err() != nil {
			// Shutting down: every option but ABORT gets
			// NBD_REP_ERR_SHUTDOWN (EXPORT_NAME has no error reply),
			// and the client is expected to disconnect.
			switch opt {
			case optAbort:
				reply(opt, repAck)
				return nil, nil
			case optExportName:
			default:
				errReply(opt, repErrShutdown, "server shutting down")
			}
			return nil, fmt.Errorf("%s during shutdown: %w", optionName(opt), ctx.Err())
		}
		switch opt {
		case optExportName:
			if err := checkName(data); err != nil {
				return nil, err
			}
			exp, err := c.s.Resolver.Open(ctx, string(data), peer)
			if err != nil {
				c.log.Info("export refused", "err", err) // not the name: it may be a capability
				return nil, err
			}
			var out [10 + 124]byte
			binary.BigEndian.PutUint64(out[0:], uint64(exp.Device.Size()))
			binary.BigEndian.PutUint16(out[8:], transmissionFlags(exp))
			msg := out[:]
			if noZeroes {
				msg = out[:10]
			}
			if _, err := c.nc.Write(msg); err != nil {
				if exp.Release != nil {
					exp.Release()
				}
				return nil, fmt.Errorf("sending export info: %w", err)
			}
			return exp, nil

		case optAbort:
			reply(opt, repAck) // the client may have gone already
			return nil, nil

		case optList:
			if length != 0 {
				if err := errReply(opt, repErrInvalid, "LIST takes no data"); err != nil {
					return nil, err
				}
				continue
			}
			list, err := c.s.Resolver.List(ctx, peer)
			if err != nil {
				c.log.Error("listing exports", "err", err)
				if err := errReply(opt, repErrPolicy, "listing refused"); err != nil {
					return nil, err
				}
				continue
			}
			for _, e := range list {
				name := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
				name = append(name, e.Name...)
				if err := reply(opt, repServer, name, []byte(e.Description)); err != nil {
					return nil, err
				}
			}
			if err := reply(opt, repAck); err != nil {
				return nil, err
			}

		case optInfo, optGo:
			req, err := parseGoRequest(data)
			if err != nil {
				c.log.Warn("malformed option", "option", optionName(opt), "err", err)
				if err := errReply(opt, repErrInvalid, err.Error()); err != nil {
					return nil, err
				}
				continue
			}
			exp, err := c.s.Resolver.Open(ctx, req.name, peer)
			if err != nil {
				c.log.Info("export refused", "err", err) // not the name: it may be a capability
				code, msg := uint32(repErrUnknown), "unknown export"
				switch {
				case errors.Is(err, fs.ErrPermission):
					code, msg = repErrPolicy, "export not allowed"
				case errors.Is(err, fs.ErrNotExist):
				case ctx.Err() != nil:
					code, msg = repErrShutdown, "server shutting down"
				default:
					code, msg = repErrUnknown, "export unavailable"
				}
				if err := errReply(opt, code, msg); err != nil {
					return nil, err
				}
				continue
			}
			if err := c.sendInfo(reply, opt, req, exp); err != nil || opt == optInfo {
				if exp.Release != nil {
					exp.Release()
				}
				if err != nil {
					return nil, err
				}
				continue
			}
			return exp, nil

		default:
			// STARTTLS, STRUCTURED_REPLY, the meta-context options,
			// EXTENDED_HEADERS and anything newer: we run without TLS
			// and with simple replies only.
			if err := errReply(opt, repErrUnsup, optionName(opt)+" not supported"); err != nil {
				return nil, err
			}
		}
	}
}

// sendInfo answers NBD_OPT_INFO / NBD_OPT_GO for exp: NBD_INFO_EXPORT
// always, then each requested information we have, then NBD_REP_ACK.
func (c *conn) sendInfo(reply func(opt, typ uint32, data ...[]byte) error, opt uint32, req goRequest, exp *Export) error {
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(exp.Device.Size()))
	info = binary.BigEndian.AppendUint16(info, transmissionFlags(exp))
	if err := reply(opt, repInfo, info); err != nil {
		return err
	}
	for _, want := range req.infos {
		var info []byte
		switch want {
		case infoName:
			info = binary.BigEndian.AppendUint16(nil, infoName)
			info = append(info, exp.Name...)
		case infoDescription:
			if exp.Description == "" {
				continue
			}
			info = binary.BigEndian.AppendUint16(nil, infoDescription)
			info = append(info, exp.Description...)
		case infoBlockSize:
			info = binary.BigEndian.AppendUint16(nil, infoBlockSize)
			info = binary.BigEndian.AppendUint32(info, MinBlockSize)
			info = binary.BigEndian.AppendUint32(info, PreferredBlockSize)
			info = binary.BigEndian.AppendUint32(info, MaxPayload)
		default:
			continue
		}
		if err := reply(opt, repInfo, info); err != nil {
			return err
		}
	}
	return reply(opt, repAck)
}

// transmissionFlags are the flags advertised for exp.
func transmissionFlags(exp *Export) uint16 {
	f := uint16(FlagHasFlags)
	if exp.ReadOnly {
		f |= FlagReadOnly
	} else {
		f |= FlagSendFlush | FlagSendFUA | FlagSendWriteZeroes
		if _, ok := exp.Device.(Trimmer); ok {
			f |= FlagSendTrim
		}
	}
	if exp.MultiConn {
		f |= FlagCanMultiConn
	}
	return f
}

// transmit reads requests until the client disconnects, the stream breaks
// or the server shuts down, handling them concurrently. Before returning it
// waits for every request it started and syncs a writable export.
func (c *conn) transmit(ctx context.Context, exp *Export) {
	c.nc.SetDeadline(time.Time{})
	c.detach()
	if ctx.Err() != nil {
		// The shutdown may have fired before the deadline was cleared,
		// or before the socket was detached.
		c.closeRead()
	}
	maxWorkers := orDefault(c.s.MaxInFlight, DefaultMaxInFlight)
	maxBytes := int64(max(orDefault(c.s.MaxBytesInFlight, DefaultMaxBytesInFlight), MaxPayload))
	c.budget = semaphore.NewWeighted(maxBytes)
	// Requests that aren't answered inline go to the connection's
	// workers, started as needed up to maxWorkers and kept until the
	// connection ends: a goroutine per request cost a start and, in the
	// deep write path, a stack copy each (a twentieth of the CPU at queue
	// depth 32).
	var wg sync.WaitGroup
	var inFlight atomic.Int32
	if sk := c.sock.Load(); sk != nil {
		sk.YieldWhile(&inFlight)
	}
	work := make(chan func())
	workers := 0
	defer func() {
		close(work)
		wg.Wait()
		if !exp.ReadOnly {
			if err := exp.Device.Sync(); err != nil {
				c.log.Error("syncing export on close", "err", err)
			}
		}
	}()
	var hdr [requestHeaderLen]byte
	prevAlone := true
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			switch {
			case ctx.Err() != nil:
				c.log.Debug("connection drained for shutdown")
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET):
				c.log.Debug("client went away", "err", err)
			default:
				c.log.Warn("reading request", "err", err)
			}
			return
		}
		req, err := parseRequest(hdr[:])
		if err != nil {
			c.log.Warn("dropping connection", "err", err)
			return
		}
		if req.typ == cmdDisc {
			c.log.Debug("client disconnected")
			return
		}
		if req.typ == cmdWrite && req.length > MaxPayload {
			c.log.Warn("write too large", "offset", req.offset, "len", req.length)
			if _, err := io.CopyN(io.Discard, c.br, int64(req.length)); err != nil {
				c.log.Warn("reading write payload", "err", err)
				return
			}
			c.send(req.handle, errInval, nil, 0)
			continue
		}
		// A read or write holds up to its length in memory until its
		// reply is sent: wait for the bytes in flight to allow it, so
		// that a client that pipelines large requests and stops
		// reading can't pin more than maxBytes.
		var weight int64
		if req.typ == cmdRead || req.typ == cmdWrite {
			weight = min(int64(req.length), maxBytes)
		}
		if !c.budget.TryAcquire(weight) {
			c.log.Debug("waiting for bytes in flight", "len", req.length)
			if err := c.budget.Acquire(ctx, weight); err != nil {
				c.log.Debug("connection drained for shutdown")
				return
			}
		}
		var payload []byte
		if req.typ == cmdWrite {
			payload = getBuf(int(req.length))
			if _, err := io.ReadFull(c.br, payload); err != nil {
				putBuf(payload)
				c.budget.Release(weight)
				c.log.Warn("reading write payload", "err", err)
				return
			}
		}
		handle := func() {
			errno, data := c.do(exp, req, payload)
			if payload != nil {
				putBuf(payload)
			}
			if errno == noReply {
				c.budget.Release(weight)
				return
			}
			c.send(req.handle, errno, data, weight)
		}
		// The client pipelines if its previous request came while
		// another was pending.
		alone := inFlight.Load() == 0 && c.br.Buffered() == 0
		pipelining := !prevAlone
		prevAlone = alone
		large := req.typ == cmdRead && req.length >= sendfileMin
		if alone && !(large && pipelining) {
			// Nothing else is pending (a client at queue depth 1):
			// answer here and save the hand-off to another goroutine.
			// Not a large read from a client that pipelines: its reply
			// waits for socket space, and meanwhile the client's next
			// requests would wait unread.
			handle()
			continue
		}
		inFlight.Add(1)
		job := func() {
			defer inFlight.Add(-1)
			handle()
		}
		select {
		case work <- job: // an idle worker took it
			continue
		default:
		}
		if workers < maxWorkers {
			workers++
			wg.Go(func() {
				job()
				for job := range work {
					job()
				}
			})
			continue
		}
		c.log.Debug("waiting for a worker", "max", maxWorkers)
		work <- job // every worker is busy: wait for one
	}
}

// noReply is do's answer when it has already sent the reply itself.
const noReply = ^uint32(0)

// sendfileMin is the smallest read sent with sendfile(2): below it, the
// copy through memory costs less than the extra system calls.
const sendfileMin = 64 << 10

// sendFiles sends a read's reply straight from the device's files with
// sendfile(2). It reports false, having sent nothing, when the device or
// connection can't do that (the caller then reads into memory) or when the
// device failed before anything was sent (the caller replies with the
// error). Once writing the header has begun, a failure can't be reported
// to the client any more (a partial header would corrupt the stream): the
// connection is closed, as the protocol requires.
func (c *conn) sendFiles(fr FileReader, req request) (bool, error) {
	sk := c.sock.Load()
	if sk == nil {
		return false, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken.Load() {
		return true, net.ErrClosed
	}
	started := false
	err := fr.ReadFiles(int64(req.offset), int64(req.length), func(f *os.File, off, n int64) error {
		if !started {
			var h [replyHeaderLen]byte
			putReply(h[:], 0, req.handle)
			started = true // even if the write fails: part may be out
			if err := sk.WriteBuffers(h[:]); err != nil {
				return err
			}
		}
		return sk.SendFile(f, off, n)
	})
	if !started {
		// Nothing sent: the caller reads into memory (ErrUnsupported) or
		// sends an ordinary error reply.
		return false, err
	}
	if err != nil {
		c.broken.Store(true)
		c.abort()
	}
	return true, err
}

// do carries out one request. It returns the reply's error value and, for a
// successful read, the data (a pool buffer); noReply if it replied itself.
func (c *conn) do(exp *Export, req request, payload []byte) (uint32, []byte) {
	allowed := uint16(cmdFlagFUA)
	if req.typ == cmdWriteZeroes {
		allowed |= cmdFlagNoHole
	}
	if req.flags&^allowed != 0 {
		c.log.Warn("unsupported command flags", "cmd", commandName(req.typ), "flags", req.flags)
		return errInval, nil
	}
	dev := exp.Device
	size := uint64(dev.Size())
	off, n := int64(req.offset), int64(req.length)
	inRange := req.offset <= size && uint64(req.length) <= size-req.offset
	writing := req.typ == cmdWrite || req.typ == cmdTrim || req.typ == cmdWriteZeroes
	switch {
	case writing && exp.ReadOnly:
		return errPerm, nil
	case req.typ == cmdTrim && !inRange:
		// proto.md: EINVAL for a read or trim beyond the end, ENOSPC
		// for a write.
		c.log.Warn("trim beyond end", "offset", req.offset, "len", req.length)
		return errInval, nil
	case writing && !inRange:
		c.log.Warn("write beyond end", "cmd", commandName(req.typ), "offset", req.offset, "len", req.length)
		return errNoSpc, nil
	}
	var err error
	switch req.typ {
	case cmdRead:
		if !inRange || req.length > MaxPayload {
			c.log.Warn("bad read", "offset", req.offset, "len", req.length)
			return errInval, nil
		}
		if fr, ok := dev.(FileReader); ok && n >= sendfileMin {
			sent, err := c.sendFiles(fr, req)
			switch {
			case sent && err != nil:
				c.log.Warn("sending read from file", "offset", req.offset, "len", req.length, "err", err)
				return noReply, nil
			case sent:
				return noReply, nil
			case err != nil && !errors.Is(err, errors.ErrUnsupported):
				return c.errno(req, err), nil
			}
		}
		buf := getBuf(int(n))
		if k, rerr := dev.ReadAt(buf, off); rerr != nil && (k != len(buf) || !errors.Is(rerr, io.EOF)) {
			putBuf(buf)
			err = rerr
			break
		}
		return 0, buf
	case cmdWrite:
		_, err = dev.WriteAt(payload, off)
	case cmdFlush:
		if !exp.ReadOnly {
			err = dev.Sync()
		}
		return c.errno(req, err), nil
	case cmdTrim:
		if t, ok := dev.(Trimmer); ok {
			err = t.Trim(off, n)
		}
	case cmdWriteZeroes:
		err = writeZeroes(dev, off, n, req.flags&cmdFlagNoHole == 0)
	default:
		c.log.Warn("unsupported command", "cmd", commandName(req.typ))
		return errInval, nil
	}
	if err == nil && writing && req.flags&cmdFlagFUA != 0 {
		err = dev.Sync()
	}
	return c.errno(req, err), nil
}

// writeZeroes zeroes a range through the device's Zeroer, or by writing
// zero buffers.
func writeZeroes(dev Device, off, n int64, punch bool) error {
	if z, ok := dev.(Zeroer); ok {
		return z.WriteZeroes(off, n, punch)
	}
	buf := getBuf(int(min(n, 1<<20)))
	defer putBuf(buf)
	clear(buf)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := dev.WriteAt(buf[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// errno turns a device error into a reply error value, logging the cause:
// the client only ever sees the generic code.
func (c *conn) errno(req request, err error) uint32 {
	if err == nil {
		return 0
	}
	var code uint32
	switch {
	case errors.Is(err, ErrReadOnly), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		code = errPerm
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		code = errNoSpc
	case errors.Is(err, syscall.EINVAL):
		code = errInval
	case errors.Is(err, os.ErrClosed), errors.Is(err, syscall.ESHUTDOWN):
		code = errShutdown
	default:
		code = errIO
	}
	c.log.Error("request failed", "cmd", commandName(req.typ), "offset", req.offset, "len", req.length, "err", err)
	return code
}

// send queues one simple reply and, unless another goroutine is flushing
// the queue, flushes it. It takes data (a pool buffer, or nil) and weight
// (the request's bytes in flight, released once the reply is written).
// After a failed write the connection is closed, which also ends the
// request reader; later replies are dropped.
func (c *conn) send(handle uint64, errno uint32, data []byte, weight int64) {
	c.qmu.Lock()
	c.queue = append(c.queue, queuedReply{data: data, weight: weight})
	putReply(c.queue[len(c.queue)-1].hdr[:], errno, handle)
	if c.flushing {
		c.qmu.Unlock()
		return // the flusher writes it
	}
	c.flushing = true
	c.qmu.Unlock()
	c.flush()
}

// flush writes the reply queue until it finds it empty.
func (c *conn) flush() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for {
		c.qmu.Lock()
		batch := c.queue
		if len(batch) == 0 {
			c.flushing = false
			c.qmu.Unlock()
			return
		}
		c.queue = c.spare[:0]
		c.qmu.Unlock()
		c.writeReplies(batch)
		for i := range batch {
			if batch[i].data != nil {
				putBuf(batch[i].data)
			}
			if batch[i].weight > 0 {
				c.budget.Release(batch[i].weight)
			}
		}
		clear(batch) // hold no buffers
		c.spare = batch[:0]
	}
}

// writeReplies writes batch to the socket; c.wmu is held.
func (c *conn) writeReplies(batch []queuedReply) {
	if c.broken.Load() {
		return
	}
	c.iov = c.iov[:0]
	for i := range batch {
		c.iov = append(c.iov, batch[i].hdr[:])
		if len(batch[i].data) > 0 {
			c.iov = append(c.iov, batch[i].data)
		}
	}
	var err error
	if sk := c.sock.Load(); sk != nil {
		err = sk.WriteBuffers(c.iov...)
	} else {
		c.nc.SetWriteDeadline(time.Now().Add(orDefault(c.s.WriteTimeout, DefaultWriteTimeout)))
		bufs := net.Buffers(slices.Clone(c.iov))
		_, err = bufs.WriteTo(c.nc)
	}
	clear(c.iov)
	if err != nil {
		c.broken.Store(true)
		c.log.Warn("sending reply", "err", err)
		c.abort()
	}
}

// detach takes the connection out of the network poller for
// transmission (see rawio.Sock), where the system allows. The poller
// woke its own thread for every request that arrived, besides the
// thread of the goroutine waiting for it; at queue depth 1 that halved
// the requests served per second. Handshakes stay in the poller, with
// its deadlines.
func (c *conn) detach() {
	sk, err := rawio.Detach(c.nc)
	if err != nil {
		c.log.Debug("serving through the network poller", "err", err)
		return
	}
	sk.SetWriteTimeout(orDefault(c.s.WriteTimeout, DefaultWriteTimeout))
	c.sock.Store(sk)
}

// Read reads the connection, as io.Reader, for c.br; only the goroutine
// that runs the connection calls it.
func (c *conn) Read(p []byte) (int, error) {
	if sk := c.sock.Load(); sk != nil {
		return sk.Read(p)
	}
	return c.nc.Read(p)
}

// closeRead ends the connection's reading, for shutdown: the read under
// way returns, and replies can still be written.
func (c *conn) closeRead() {
	if sk := c.sock.Load(); sk != nil {
		sk.CloseRead()
		return
	}
	c.nc.SetReadDeadline(aLongTimeAgo)
}

// abort ends the connection's reads and writes, those under way too.
func (c *conn) abort() {
	c.nc.Close()
	if sk := c.sock.Load(); sk != nil {
		sk.Shutdown()
	}
}

// Buffer pool: one sync.Pool per power-of-two size class from 4 KiB to
// MaxPayload, so that steady-state I/O allocates nothing.
const (
	minClassShift = 12
	maxClassShift = 25
)

var bufPools [maxClassShift - minClassShift + 1]sync.Pool

func sizeClass(n int) int {
	c := 0
	for (1 << (minClassShift + c)) < n {
		c++
	}
	return c
}

func getBuf(n int) []byte {
	if n > MaxPayload {
		return make([]byte, n)
	}
	c := sizeClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(minClassShift+c))
}

func putBuf(b []byte) {
	c := sizeClass(cap(b))
	if c > len(bufPools)-1 || cap(b) != 1<<(minClassShift+c) {
		return
	}
	b = b[:cap(b)]
	bufPools[c].Put(&b)
}

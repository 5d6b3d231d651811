package tftp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	pin "github.com/pin/tftp/v3"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Defaults for the zero values of Server's fields.
const (
	// DefaultTimeout is how long the server waits for a client's ACK
	// before sending again.
	DefaultTimeout = time.Second
	// DefaultRetries is how many times a packet is sent again before the
	// transfer is given up.
	DefaultRetries = 5
	// DefaultMaxConcurrent bounds the transfers served at once.
	DefaultMaxConcurrent = 64
	// DefaultDrainTimeout bounds how long Serve lets in-flight transfers
	// run once its context is done.
	DefaultDrainTimeout = 10 * time.Second
)

// maxWindowBytes caps the bytes sent ahead of ACKs in one transfer,
// whatever Server.Anticipate says, so that large blocks go one at a time: a
// window of 65464-byte blocks would overflow the default Linux socket
// receive buffer (208 KiB) at 4 packets. At blksize 1468 it allows 22
// packets, at 8192 four.
const maxWindowBytes = 32 << 10

// maxWindow is pin/tftp's largest anticipation window.
const maxWindow = 60

// Handler returns the contents of path for the client at peer, and its
// size in bytes, or -1 if unknown (the size answers the tsize option of
// RFC 2349). The path has been through [CleanPath].
//
// To refuse, a Handler returns an error wrapping fs.ErrNotExist (sent as
// TFTP error 1, file not found) or fs.ErrPermission (error 2, access
// violation). Any other error is a server fault: the client gets error 0
// with a generic message, and the full cause goes to the log. The server
// closes the ReadCloser when the transfer ends.
//
// A Handler is called concurrently, with the context given to Serve, and
// should return promptly once that context is done.
type Handler func(ctx context.Context, path string, peer netip.AddrPort) (io.ReadCloser, int64, error)

// Deliverer is implemented by a file that wants to know that the client
// received all of it: the server calls Delivered once the client has
// acknowledged the last block, and before closing the file and reporting
// the transfer. Unlike the request, whose source address anyone on the
// network can forge, the acknowledgement shows that the client receives
// at that address. The context is Serve's, without its cancellation (a
// transfer finishing during the drain is delivered too). An error fails
// the transfer as reported to OnTransfer; the client has the file anyway.
type Deliverer interface {
	Delivered(ctx context.Context) error
}

// Transfer describes one read request once it is over, successful or not.
type Transfer struct {
	// Path is the requested file name after CleanPath, or as sent when
	// CleanPath refused it.
	Path string
	// Peer is the client's address and port.
	Peer netip.AddrPort
	// Bytes is how many bytes of the file were sent. A failed transfer may
	// count a few blocks sent but never acknowledged.
	Bytes int64
	// Size is the size the Handler reported, -1 if unknown or if the
	// Handler refused.
	Size int64
	// BlockSize is the negotiated block size in bytes (RFC 2348).
	BlockSize int
	// Duration runs from the arrival of the request to the last ACK or
	// the failure.
	Duration time.Duration
	// Err is nil for a complete transfer. A refusal wraps fs.ErrNotExist
	// or fs.ErrPermission as the Handler or CleanPath returned it.
	Err error
}

// Server is a read-only TFTP server (RFC 1350) with the blksize (RFC 2348)
// and tsize (RFC 2349) options, built on github.com/pin/tftp/v3. The zero
// value with a Handler set is ready to use. A Server must not be copied
// after first use; it may serve several sockets at once.
//
// # Requests
//
// The server reads requests itself and hands pin/tftp only the valid ones:
// write requests get error 2, malformed ones error 4, names refused by
// [CleanPath] error 2, and Handler refusals error 1 or 2, all sent from a
// fresh port as a transfer would be. Option names are matched without
// regard to case and the blksize option (with FitMTU) is lowered to fit the MTU of the
// interface the request arrived on. A request identical to one from the
// same address and port whose transfer is still running is a client
// retransmission and is dropped (pin/tftp alone would start a second
// transfer). Requests beyond MaxConcurrent running transfers are dropped
// too, so that the client retries later rather than failing.
//
// # Shutdown
//
// When the context passed to Serve is done, the server closes the socket,
// lets running transfers go on for DrainTimeout, then makes each of them
// fail at its next block with an ERROR packet, and returns. A transfer
// whose client has vanished ends once its retransmissions run out, so
// Serve returns at most about DrainTimeout + Timeout×(Retries+1) after the
// context is done, plus whatever the Handlers take to return.
type Server struct {
	// Handler opens the requested files. Required.
	Handler Handler
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Timeout is the per-packet retransmission timeout; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Retries is how many times a packet is sent again before a transfer
	// fails; 0 means DefaultRetries.
	Retries int
	// Anticipate is the number of DATA packets sent before waiting for
	// their ACKs (pin/tftp's SetAnticipate), capped to 32 KiB of data so
	// that large blocks go one at a time. It is not negotiated: the client
	// sees an ordinary lock-step transfer arriving in bursts. 0 or 1 turns
	// it off, the default.
	//
	// A burst larger than the client's receive ring overflows it, the lost
	// block costs a whole Timeout, and the resent burst overflows the same
	// way, so the transfer fails once Retries run out: measured with a
	// client that buffers about 4 packets, a window of 8 failed every
	// transfer and 4 completed. U-Boot keeps 4 receive buffers by default
	// (CONFIG_SYS_RX_ETH_BUFFER), shared with broadcast traffic. Set 4
	// only where every client is known to buffer more (iPXE, PXELINUX on
	// common NICs, Linux): over veth it gave 1.3-1.8 times the throughput
	// of lock-step at blksize 512-1468, and more is expected with a LAN's
	// longer round trips. Pair it with a Timeout of about a second.
	Anticipate uint
	// MaxConcurrent bounds the transfers served at once; 0 means
	// DefaultMaxConcurrent.
	MaxConcurrent int
	// DrainTimeout bounds how long running transfers may go on after the
	// context given to Serve is done; 0 means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// FitMTU lowers the negotiated blksize to what fits one frame of the
	// interface the request came in on, so that blocks are never
	// IP-fragmented. Off by default: a client that asks for large blocks
	// gets them (up to 65464, as tftpd-hpa does), which is several times
	// faster on a LAN that passes fragments; turn it on where fragments
	// get lost.
	FitMTU bool
	// OnTransfer, if set, is called once for every read request the server
	// processed (not for dropped duplicates or overload), when its
	// transfer is over. It is called from the transfer's goroutine, so
	// concurrently, and delays the release of the transfer's slot until it
	// returns.
	OnTransfer func(Transfer)
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

// ListenAndServe listens on the UDP address addr (usually ":69") and calls
// Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return fmt.Errorf("listening for TFTP: %w", err)
	}
	return s.Serve(ctx, pc)
}

// Serve answers requests arriving on pc until ctx is done, then drains as
// described in the Shutdown section and returns nil. It closes pc. It
// returns an error if reading from pc fails for another reason.
//
// pc is normally a *net.UDPConn: the server then learns, for each request,
// the local address and interface it came in on, answers refusals from
// that address, and fits block sizes to the interface's MTU. Transfers
// always run on sockets of their own.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn) error {
	if s.Handler == nil {
		pc.Close()
		return errors.New("tftp: Server.Handler is nil")
	}
	sv := &serving{
		s:        s,
		ctx:      ctx,
		log:      s.logger(),
		pc:       pc,
		slots:    make(chan struct{}, orDefault(s.MaxConcurrent, DefaultMaxConcurrent)),
		abort:    make(chan struct{}),
		inflight: make(map[dupKey]struct{}),
		pending:  make(map[string]*transfer),
		pins:     make(map[uint]*pinServer),
	}
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	serveErr := sv.readLoop()
	pc.Close()
	sv.drain()
	return serveErr
}

// serving is the state of one Serve call.
type serving struct {
	s   *Server
	ctx context.Context
	log *slog.Logger
	pc  net.PacketConn

	slots chan struct{} // one per running transfer
	abort chan struct{} // closed when the drain timeout expires
	reqs  sync.WaitGroup

	mu       sync.Mutex
	inflight map[dupKey]struct{}  // requests whose transfer is running
	pending  map[string]*transfer // opened, handed to pin/tftp, not yet started
	pins     map[uint]*pinServer  // by window size
	closing  bool                 // no new pin/tftp servers
	seq      uint64               // for transfer tokens
}

// dupKey identifies a request for duplicate detection.
type dupKey struct {
	peer netip.AddrPort
	req  string
}

// packetInfo is what the socket tells about a received request.
type packetInfo struct {
	local netip.Addr // the address the request was sent to, if known
	mtu   int        // of the interface it came in on, 0 if unknown
	v6    bool       // the socket is IPv6, so is the path (for the MTU)
}

// readLoop reads requests until the socket is closed.
func (sv *serving) readLoop() error {
	var readFrom func([]byte) (int, packetInfo, net.Addr, error)
	if uc, ok := sv.pc.(*net.UDPConn); ok {
		readFrom = controlReader(uc)
	} else {
		readFrom = func(b []byte) (int, packetInfo, net.Addr, error) {
			n, src, err := sv.pc.ReadFrom(b)
			return n, packetInfo{}, src, err
		}
	}
	buf := make([]byte, maxRequestLen+1)
	var backoff time.Duration
	for {
		n, info, src, err := readFrom(buf)
		if err != nil {
			if sv.ctx.Err() != nil {
				return nil
			}
			if isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				sv.log.Error("reading TFTP request failed, retrying", "err", err, "dur", backoff)
				select {
				case <-time.After(backoff):
				case <-sv.ctx.Done():
				}
				continue
			}
			return fmt.Errorf("reading TFTP requests: %w", err)
		}
		backoff = 0
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		sv.packet(buf[:n], ua, info, time.Now())
	}
}

// controlReader reads from uc with the destination address and interface
// of each packet, when the platform gives them.
func controlReader(uc *net.UDPConn) func([]byte) (int, packetInfo, net.Addr, error) {
	plain := func(b []byte) (int, packetInfo, net.Addr, error) {
		n, src, err := uc.ReadFrom(b)
		return n, packetInfo{}, src, err
	}
	la, ok := uc.LocalAddr().(*net.UDPAddr)
	if !ok {
		return plain
	}
	mtu := func(ifIndex int) int {
		if ifIndex <= 0 {
			return 0
		}
		ifi, err := net.InterfaceByIndex(ifIndex)
		if err != nil {
			return 0
		}
		return ifi.MTU
	}
	if la.IP.To4() != nil {
		p := ipv4.NewPacketConn(uc)
		if p.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true) != nil {
			return plain
		}
		return func(b []byte) (int, packetInfo, net.Addr, error) {
			n, cm, src, err := p.ReadFrom(b)
			var info packetInfo
			if cm != nil {
				info.local, _ = netip.AddrFromSlice(cm.Dst)
				info.mtu = mtu(cm.IfIndex)
			}
			return n, info, src, err
		}
	}
	p := ipv6.NewPacketConn(uc)
	if p.SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true) != nil {
		return plain
	}
	return func(b []byte) (int, packetInfo, net.Addr, error) {
		n, cm, src, err := p.ReadFrom(b)
		info := packetInfo{v6: true}
		if cm != nil {
			info.local, _ = netip.AddrFromSlice(cm.Dst)
			info.mtu = mtu(cm.IfIndex)
		}
		return n, info, src, err
	}
}

// isTemporary reports read errors worth retrying.
func isTemporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNREFUSED) // an ICMP error for an earlier reply
}

func peerOf(ua *net.UDPAddr) netip.AddrPort {
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// packet handles one packet that arrived on the server's port.
func (sv *serving) packet(b []byte, src *net.UDPAddr, info packetInfo, now time.Time) {
	peer := peerOf(src)
	if len(b) > maxRequestLen {
		sv.log.Warn("oversized request dropped", "peer", peer.String(), "len", len(b))
		return
	}
	if len(b) >= 2 {
		switch binary.BigEndian.Uint16(b) {
		case opDATA, opACK, opERROR, opOACK:
			// Strays of finished transfers, or a client answering our
			// refusal: nothing to say back.
			sv.log.Debug("stray packet on the server port", "peer", peer.String(), "len", len(b))
			return
		}
	}
	req, err := parseRequest(b)
	if err != nil {
		if len(b) < 2 || binary.BigEndian.Uint16(b) > opWRQ || binary.BigEndian.Uint16(b) == 0 {
			// Not TFTP at all: no answer, as to the strays above.
			sv.log.Debug("garbage on the server port", "peer", peer.String(), "len", len(b))
			return
		}
		sv.log.Warn("malformed request", "peer", peer.String(), "err", err)
		sv.sendError(src, info, errIllegal, "illegal TFTP operation")
		return
	}
	if req.op == opWRQ {
		sv.log.Warn("write request refused", "peer", peer.String(), "file", req.filename)
		sv.sendError(src, info, errAccess, "access violation")
		return
	}
	if req.mode != "octet" && req.mode != "netascii" {
		sv.log.Warn("unsupported transfer mode", "peer", peer.String(), "file", req.filename, "mode", req.mode)
		sv.sendError(src, info, errIllegal, "unsupported mode")
		return
	}
	key := dupKey{peer, string(b)}
	sv.mu.Lock()
	if _, dup := sv.inflight[key]; dup {
		sv.mu.Unlock()
		sv.log.Debug("duplicate request dropped", "peer", peer.String(), "file", req.filename)
		return
	}
	select {
	case sv.slots <- struct{}{}:
	default:
		sv.mu.Unlock()
		sv.log.Warn("too many transfers, request dropped", "peer", peer.String(), "file", req.filename)
		return
	}
	sv.inflight[key] = struct{}{}
	sv.mu.Unlock()
	t := &transfer{
		key:     key,
		addr:    src,
		info:    info,
		peer:    peer,
		path:    req.filename,
		size:    -1,
		blksize: defaultBlockSize,
		start:   now,
	}
	sv.reqs.Go(func() { sv.open(t, req) })
}

// transfer is one read request from its arrival to its end.
type transfer struct {
	key     dupKey
	addr    *net.UDPAddr
	info    packetInfo
	peer    netip.AddrPort
	path    string
	token   string // the name pin/tftp knows it by
	rc      io.ReadCloser
	size    int64
	blksize int
	window  uint // anticipation window, in packets
	text    bool // netascii mode
	start   time.Time
}

// open checks and opens the requested file, then hands the transfer to
// pin/tftp, or refuses it.
func (sv *serving) open(t *transfer, req request) {
	log := sv.log.With("peer", t.peer.String(), "file", t.path)
	p, err := CleanPath(req.filename)
	if err != nil {
		log.Warn("file name refused", "err", err)
		sv.refuse(t, err)
		return
	}
	t.path = p
	rc, size, err := sv.s.Handler(sv.ctx, p, t.peer)
	if err == nil && rc == nil {
		err = errors.New("Handler returned no file and no error")
	}
	if err != nil {
		switch {
		case sv.ctx.Err() != nil:
			// Shutting down: let the client retry, maybe with our successor.
			sv.end(t, 0, fmt.Errorf("opening %s: %w", p, err))
			return
		case errors.Is(err, fs.ErrNotExist):
			log.Debug("file not found", "err", err)
		case errors.Is(err, fs.ErrPermission):
			log.Warn("file refused", "err", err)
		default:
			log.Error("opening file", "err", err)
		}
		sv.refuse(t, fmt.Errorf("opening %s: %w", p, err))
		return
	}
	t.rc, t.size = rc, size
	t.text = req.mode == "netascii"

	// The request pin/tftp sees names the transfer by a token and carries
	// only the options it should acknowledge, in lowercase.
	fwd := request{op: opRRQ, mode: req.mode}
	if v, ok := req.opt("blksize"); ok {
		overhead := ipv4Overhead
		if t.info.v6 {
			overhead = ipv6Overhead
		}
		mtu := 0
		if sv.s.FitMTU {
			mtu = t.info.mtu
		}
		if n, ok := blockSize(v, mtu, overhead); ok {
			t.blksize = n
			fwd.opts = append(fwd.opts, option{"blksize", strconv.Itoa(n)})
		}
	}
	if _, ok := req.opt("tsize"); ok && !t.text && size >= 0 {
		fwd.opts = append(fwd.opts, option{"tsize", "0"})
	}
	t.window = max(1, min(sv.s.Anticipate, maxWindow, uint(maxWindowBytes/t.blksize)))

	sv.mu.Lock()
	if sv.closing || sv.ctx.Err() != nil {
		sv.mu.Unlock()
		sv.end(t, 0, fmt.Errorf("serving %s: %w", p, errShutdown))
		return
	}
	sv.seq++
	t.token = "rackboot-" + strconv.FormatUint(sv.seq, 10)
	fwd.filename = t.token
	ps := sv.pinFor(t.window)
	sv.pending[t.token] = t
	sv.mu.Unlock()

	if !ps.conn.deliver(forward{appendRequest(nil, fwd), t.addr, t.token}) {
		sv.release(t.token, errShutdown)
	}
}

var errShutdown = errors.New("server shutting down")

// refuse answers a refused request with the ERROR packet err calls for.
func (sv *serving) refuse(t *transfer, err error) {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		sv.sendError(t.addr, t.info, errNotFound, "file not found")
	case errors.Is(err, fs.ErrPermission):
		sv.sendError(t.addr, t.info, errAccess, "access violation")
	default:
		sv.sendError(t.addr, t.info, errUndefined, "server error")
	}
	sv.end(t, 0, err)
}

// sendError sends an ERROR packet to dst from a fresh port on the address
// the request came to, as a transfer would (RFC 1350 section 4), or from
// the server's socket if that is not a UDP socket.
func (sv *serving) sendError(dst *net.UDPAddr, info packetInfo, code uint16, msg string) {
	pkt := appendError(nil, code, msg)
	if _, ok := sv.pc.(*net.UDPConn); !ok {
		sv.pc.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := sv.pc.WriteTo(pkt, dst); err != nil {
			sv.log.Debug("sending error packet", "peer", dst.String(), "err", err)
		}
		return
	}
	var laddr net.UDPAddr
	if info.local.IsValid() && !info.local.IsMulticast() && info.local != netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		laddr.IP = info.local.AsSlice()
	}
	c, err := net.ListenUDP("udp", &laddr)
	if err != nil {
		sv.log.Error("opening socket for error packet", "peer", dst.String(), "err", err)
		return
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := c.WriteToUDP(pkt, dst); err != nil {
		sv.log.Debug("sending error packet", "peer", dst.String(), "err", err)
	}
}

// end finishes a transfer: it closes the file, frees the slot, logs and
// reports.
func (sv *serving) end(t *transfer, n int64, err error) {
	if t.rc != nil {
		if cerr := t.rc.Close(); cerr != nil {
			sv.log.Warn("closing file", "peer", t.peer.String(), "file", t.path, "err", cerr)
		}
	}
	dur := time.Since(t.start)
	if err == nil {
		sv.log.Debug("transfer done", "peer", t.peer.String(), "file", t.path, "bytes", n, "blksize", t.blksize, "dur", dur)
	} else if t.rc != nil {
		sv.log.Info("transfer failed", "peer", t.peer.String(), "file", t.path, "bytes", n, "dur", dur, "err", err)
	}
	// The transfer is over: the same request again starts a new one, even
	// while OnTransfer runs. Its slot is freed only after that.
	sv.mu.Lock()
	delete(sv.inflight, t.key)
	sv.mu.Unlock()
	if sv.s.OnTransfer != nil {
		size := t.size
		if t.rc == nil {
			size = -1
		}
		sv.s.OnTransfer(Transfer{
			Path:      t.path,
			Peer:      t.peer,
			Bytes:     n,
			Size:      size,
			BlockSize: t.blksize,
			Duration:  dur,
			Err:       err,
		})
	}
	<-sv.slots
}

// claim takes the pending transfer named token.
func (sv *serving) claim(token string) *transfer {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	t := sv.pending[token]
	delete(sv.pending, token)
	return t
}

// release ends a pending transfer that pin/tftp never started.
func (sv *serving) release(token string, err error) {
	if t := sv.claim(token); t != nil {
		sv.end(t, 0, fmt.Errorf("starting transfer of %s: %w", t.path, err))
	}
}

// readHandler is pin/tftp's read handler: it runs a transfer opened by
// open.
func (sv *serving) readHandler(token string, rf io.ReaderFrom) error {
	t := sv.claim(token)
	if t == nil {
		// Not one of ours: pin/tftp answers with an ERROR.
		return errors.New("file not found")
	}
	if ot, ok := rf.(pin.OutgoingTransfer); ok && t.size >= 0 && !t.text {
		ot.SetSize(t.size)
	}
	r := &transferReader{r: t.rc, abort: sv.abort, panics: t.window > 1}
	n, err := runTransfer(rf, r)
	switch {
	case r.err != nil:
		err = r.err
	case err != nil:
		err = fmt.Errorf("sending %s: %w", t.path, err)
	default:
		if d, ok := t.rc.(Deliverer); ok {
			if derr := d.Delivered(context.WithoutCancel(sv.ctx)); derr != nil {
				err = fmt.Errorf("delivering %s: %w", t.path, derr)
			}
		}
	}
	sv.end(t, n, err)
	return nil
}

// runTransfer sends r through rf, and turns the panic r raises to stop an
// anticipating transfer back into an error.
func runTransfer(rf io.ReaderFrom, r *transferReader) (n int64, err error) {
	defer func() {
		if p := recover(); p != nil {
			if p != errAbortTransfer {
				panic(p)
			}
			n, err = r.n, r.err
		}
	}()
	return rf.ReadFrom(r)
}

// transferReader feeds a file to pin/tftp, and stops the transfer when the
// drain timeout expires.
//
// pin/tftp sends the text of a read error to the client, so the reader
// returns generic errors and keeps the cause in err. In anticipation mode
// pin/tftp v3.2.0 can't take a read error at all: readFromAnticipate calls
// abort with its nil named result and crashes the process on err.Error().
// There the reader panics with errAbortTransfer instead, runTransfer
// recovers it, and pin/tftp's deferred close of the transfer's socket runs
// on the way; the client gets no ERROR and times out.
type transferReader struct {
	r      io.Reader
	abort  <-chan struct{}
	panics bool
	n      int64
	err    error
}

var (
	errReadFailed    = errors.New("server error")
	errAbortTransfer = errors.New("transfer aborted")
)

func (r *transferReader) Read(p []byte) (int, error) {
	select {
	case <-r.abort:
		r.err = errShutdown
		return 0, r.fail(errShutdown)
	default:
	}
	n, err := r.r.Read(p)
	r.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) {
		r.err = fmt.Errorf("reading file: %w", err)
		return n, r.fail(errReadFailed)
	}
	return n, err
}

func (r *transferReader) fail(err error) error {
	if r.panics {
		panic(errAbortTransfer)
	}
	return err
}

// pinFor returns the pin/tftp server for a window size, starting it if
// needed. sv.mu must be held.
func (sv *serving) pinFor(window uint) *pinServer {
	if ps, ok := sv.pins[window]; ok {
		return ps
	}
	ps := &pinServer{
		conn: &pinConn{
			local:  sv.pc.LocalAddr(),
			reqs:   make(chan forward),
			closed: make(chan struct{}),
		},
		done: make(chan struct{}),
	}
	srv := pin.NewServer(sv.readHandler, nil)
	srv.SetTimeout(orDefault(sv.s.Timeout, DefaultTimeout))
	srv.SetRetries(orDefault(sv.s.Retries, DefaultRetries))
	srv.SetAnticipate(window)
	// Retransmit right after a timeout: the timeout already waited.
	srv.SetBackoff(func(int) time.Duration { return 0 })
	// We negotiate block sizes ourselves (open); pin/tftp's own MTU
	// clamp works only on the socket it reads from, which isn't the
	// network's.
	srv.SetBlockSizeNegotiation(false)
	srv.SetHook(pinHook{sv, ps.conn})
	ps.srv = srv
	sv.pins[window] = ps
	go func() {
		defer close(ps.done)
		srv.Serve(ps.conn)
	}()
	return ps
}

// drain runs the shutdown once the socket is closed.
func (sv *serving) drain() {
	sv.reqs.Wait()
	timer := time.AfterFunc(orDefault(sv.s.DrainTimeout, DefaultDrainTimeout), func() { close(sv.abort) })
	defer timer.Stop()
	sv.mu.Lock()
	sv.closing = true
	pins := make([]*pinServer, 0, len(sv.pins))
	for _, ps := range sv.pins {
		pins = append(pins, ps)
	}
	sv.mu.Unlock()
	for _, ps := range pins {
		ps.srv.Shutdown() // closes ps.conn, waits for its transfers
		ps.conn.Close()
		<-ps.done
	}
	sv.mu.Lock()
	var left []string
	for token := range sv.pending {
		left = append(left, token)
	}
	sv.mu.Unlock()
	for _, token := range left {
		sv.release(token, errShutdown)
	}
}

// pinServer is a pin/tftp server fed with requests by a pinConn.
type pinServer struct {
	srv  *pin.Server
	conn *pinConn
	done chan struct{}
}

// forward is a request handed to pin/tftp.
type forward struct {
	pkt   []byte
	addr  *net.UDPAddr
	token string
}

// pinConn is the net.PacketConn a pin/tftp server reads requests from.
// pin/tftp never writes to it: each transfer has its own socket.
type pinConn struct {
	local  net.Addr
	reqs   chan forward
	closed chan struct{}
	once   sync.Once
	// last is the token of the request ReadFrom returned last, until
	// pin/tftp asks for the next one. Only pin/tftp's request loop
	// touches it.
	last string
}

// deliver hands f to pin/tftp; it reports false if the server is closed.
func (c *pinConn) deliver(f forward) bool {
	select {
	case c.reqs <- f:
		return true
	case <-c.closed:
		return false
	}
}

func (c *pinConn) ReadFrom(p []byte) (int, net.Addr, error) {
	c.last = ""
	select {
	case f := <-c.reqs:
		c.last = f.token
		return copy(p, f.pkt), f.addr, nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	}
}

func (c *pinConn) WriteTo([]byte, net.Addr) (int, error) {
	return 0, errors.New("tftp: internal socket is read-only")
}

func (c *pinConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *pinConn) LocalAddr() net.Addr              { return c.local }
func (c *pinConn) SetDeadline(time.Time) error      { return nil }
func (c *pinConn) SetReadDeadline(time.Time) error  { return nil }
func (c *pinConn) SetWriteDeadline(time.Time) error { return nil }

// pinHook catches the one failure pin/tftp reports without calling the
// read handler: a request it could not start a transfer for (no socket).
// Those reports carry no file name, and come from the request loop right
// after it read the request, before it reads the next.
type pinHook struct {
	sv   *serving
	conn *pinConn
}

func (h pinHook) OnSuccess(pin.TransferStats) {}

func (h pinHook) OnFailure(st pin.TransferStats, err error) {
	if st.Filename != "" || h.conn.last == "" {
		return // a transfer's own failure: readHandler reports it
	}
	token := h.conn.last
	h.conn.last = ""
	h.sv.log.Error("starting transfer", "err", err)
	h.sv.release(token, err)
}

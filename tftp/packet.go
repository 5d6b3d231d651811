package tftp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Opcodes (RFC 1350 section 5, RFC 2347).
const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// Error codes (RFC 1350 appendix, RFC 2347).
const (
	errUndefined = 0
	errNotFound  = 1
	errAccess    = 2
	errIllegal   = 4
)

// Block sizes (RFC 1350, RFC 2348).
const (
	defaultBlockSize = 512
	// maxBlockSize is the largest blksize RFC 2348 allows, and the largest
	// that fits a UDP datagram over IPv4.
	maxBlockSize = 65464
	// ipv4Overhead and ipv6Overhead are the IP, UDP and TFTP header bytes
	// in a DATA packet: a block of MTU minus these fits one frame.
	ipv4Overhead = 20 + 8 + 4
	ipv6Overhead = 40 + 8 + 4
)

// maxRequestLen bounds a request packet. RFC 2347 limits requests to 512
// bytes; we take twice that so that a slightly oversized request from a
// sloppy client still works.
const maxRequestLen = 1024

var errMalformed = errors.New("malformed request")

// request is a parsed RRQ or WRQ (RFC 1350 section 5, RFC 2347).
type request struct {
	op       uint16
	filename string
	// mode is lowercased: RFC 1350 modes are case-insensitive.
	mode string
	// opts holds the options in the order the client sent them, names
	// lowercased (RFC 2347 option names are case-insensitive; pin/tftp
	// only matches lowercase ones). A repeated option keeps its first value.
	opts []option
}

type option struct{ name, value string }

// opt returns the value of the named option and whether the client sent it.
func (r *request) opt(name string) (string, bool) {
	for _, o := range r.opts {
		if o.name == name {
			return o.value, true
		}
	}
	return "", false
}

// parseRequest parses a request packet. The file name and mode must each be
// NUL-terminated; options are read until the packet ends, and a trailing
// incomplete option or NUL padding is ignored, as several PXE stacks pad
// or truncate their requests.
func parseRequest(b []byte) (request, error) {
	if len(b) < 2 {
		return request{}, fmt.Errorf("%d-byte packet: %w", len(b), errMalformed)
	}
	if len(b) > maxRequestLen {
		return request{}, fmt.Errorf("%d-byte request: %w", len(b), errMalformed)
	}
	r := request{op: binary.BigEndian.Uint16(b)}
	if r.op != opRRQ && r.op != opWRQ {
		return request{}, fmt.Errorf("opcode %d: %w", r.op, errMalformed)
	}
	rest := b[2:]
	field := func() (string, bool) {
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return "", false
		}
		f := string(rest[:i])
		rest = rest[i+1:]
		return f, true
	}
	var ok bool
	if r.filename, ok = field(); !ok {
		return request{}, fmt.Errorf("file name not terminated: %w", errMalformed)
	}
	mode, ok := field()
	if !ok || mode == "" {
		return request{}, fmt.Errorf("mode missing: %w", errMalformed)
	}
	r.mode = asciiLower(mode)
	for len(rest) > 0 {
		name, ok := field()
		if !ok || name == "" {
			break
		}
		value, ok := field()
		if !ok {
			break
		}
		name = asciiLower(name)
		if _, dup := r.opt(name); !dup {
			r.opts = append(r.opts, option{name, value})
		}
	}
	return r, nil
}

// asciiLower lowercases the ASCII letters of s and leaves other bytes
// alone: modes and option names are ASCII (RFC 1350, RFC 2347), and
// strings.ToLower would turn invalid UTF-8 into U+FFFD.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// appendRequest encodes r.
func appendRequest(b []byte, r request) []byte {
	b = binary.BigEndian.AppendUint16(b, r.op)
	b = append(append(b, r.filename...), 0)
	b = append(append(b, r.mode...), 0)
	for _, o := range r.opts {
		b = append(append(b, o.name...), 0)
		b = append(append(b, o.value...), 0)
	}
	return b
}

// appendError encodes an ERROR packet.
func appendError(b []byte, code uint16, msg string) []byte {
	b = binary.BigEndian.AppendUint16(b, opERROR)
	b = binary.BigEndian.AppendUint16(b, code)
	return append(append(b, msg...), 0)
}

// blockSize returns the block size to negotiate for a client that asked
// for blksize value (RFC 2348) over a path whose MTU is mtu (0 if
// unknown), and whether to acknowledge the option at all. Values under 512
// are not acknowledged, which leaves the transfer at the default 512 bytes
// (RFC 2347 lets a server ignore an option); larger values are lowered to
// 65464 and to what fits one frame of the interface the request came in on,
// so that blocks are never IP-fragmented.
func blockSize(value string, mtu, overhead int) (int, bool) {
	n, err := strconv.Atoi(value)
	if err != nil || n < defaultBlockSize {
		return defaultBlockSize, false
	}
	n = min(n, maxBlockSize)
	if mtu > 0 {
		n = min(n, mtu-overhead)
	}
	return max(n, defaultBlockSize), true
}

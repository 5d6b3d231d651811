package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Wire constants from the NBD protocol document (proto.md). Only the values
// rackboot speaks or refuses are listed.
const (
	magicNBD         = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt         = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply    = 0x0003e889045565a9
	magicRequest     = 0x25609513
	magicSimpleReply = 0x67446698

	// Handshake flags (server) and client flags.
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	clientFlagsAllowed = flagFixedNewstyle | flagNoZeroes

	// Options.
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
	optExtendedHeaders = 11

	// Option replies.
	repAck          = 1
	repServer       = 2
	repInfo         = 3
	repFlagError    = 1 << 31
	repErrUnsup     = repFlagError | 1
	repErrPolicy    = repFlagError | 2
	repErrInvalid   = repFlagError | 3
	repErrPlatform  = repFlagError | 4
	repErrTLSReqd   = repFlagError | 5
	repErrUnknown   = repFlagError | 6
	repErrShutdown  = repFlagError | 7
	repErrBlockSize = repFlagError | 8
	repErrTooBig    = repFlagError | 9

	// Information types for NBD_OPT_INFO and NBD_OPT_GO.
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	// Transmission flags.
	FlagHasFlags        = 1 << 0
	FlagReadOnly        = 1 << 1
	FlagSendFlush       = 1 << 2
	FlagSendFUA         = 1 << 3
	FlagRotational      = 1 << 4
	FlagSendTrim        = 1 << 5
	FlagSendWriteZeroes = 1 << 6
	FlagSendDF          = 1 << 7
	FlagCanMultiConn    = 1 << 8

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	// Command flags.
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4

	// Error values for simple replies.
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

// Limits the server applies to what a client may send.
const (
	// MaxNameLength is the longest export name accepted (proto.md: strings
	// MUST be no longer than 4096 bytes).
	MaxNameLength = 4096
	// maxOptionLength caps the data of one option. Options we support carry
	// at most a name and a short list of info requests; anything larger is
	// skipped if unknown, and beyond this a client is treated as abusive.
	maxOptionLength = 1 << 20
	// requestHeaderLen is the size of a request header on the wire.
	requestHeaderLen = 28
	// replyHeaderLen is the size of a simple reply header on the wire.
	replyHeaderLen = 16
)

// errMalformed is returned by the parsers for data that doesn't follow the
// protocol.
var errMalformed = errors.New("malformed")

// request is one transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// parseRequest decodes a request header. It fails only on a bad magic: every
// other oddity (unknown type, bad flags, bad range) is answered with an error
// reply by the server, because the connection can stay in sync.
func parseRequest(b []byte) (request, error) {
	if len(b) < requestHeaderLen {
		return request{}, fmt.Errorf("request header of %d bytes: %w", len(b), errMalformed)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return request{}, fmt.Errorf("request magic %#08x: %w", m, errMalformed)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// appendRequest encodes a request header, for the client and the tests.
func appendRequest(b []byte, r request) []byte {
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, r.flags)
	b = binary.BigEndian.AppendUint16(b, r.typ)
	b = binary.BigEndian.AppendUint64(b, r.handle)
	b = binary.BigEndian.AppendUint64(b, r.offset)
	return binary.BigEndian.AppendUint32(b, r.length)
}

// putReply encodes a simple reply header into b, which must hold
// replyHeaderLen bytes.
func putReply(b []byte, errno uint32, handle uint64) {
	binary.BigEndian.PutUint32(b[0:4], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}

// goRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type goRequest struct {
	name  string
	infos []uint16
}

// parseGoRequest decodes the data of NBD_OPT_INFO / NBD_OPT_GO:
// a 32-bit name length, the name, a 16-bit count and that many 16-bit
// information requests, with nothing left over.
func parseGoRequest(data []byte) (goRequest, error) {
	if len(data) < 6 {
		return goRequest{}, fmt.Errorf("%d bytes of option data: %w", len(data), errMalformed)
	}
	n := binary.BigEndian.Uint32(data[0:4])
	if uint64(n) > uint64(len(data)-6) {
		return goRequest{}, fmt.Errorf("name length %d in %d bytes: %w", n, len(data), errMalformed)
	}
	name := data[4 : 4+n]
	rest := data[4+n:]
	count := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*count {
		return goRequest{}, fmt.Errorf("%d information requests in %d bytes: %w", count, len(rest), errMalformed)
	}
	if err := checkName(name); err != nil {
		return goRequest{}, err
	}
	r := goRequest{name: string(name)}
	for i := range count {
		r.infos = append(r.infos, binary.BigEndian.Uint16(rest[2*i:]))
	}
	return r, nil
}

// appendGoRequest encodes the data of NBD_OPT_INFO / NBD_OPT_GO.
func appendGoRequest(b []byte, r goRequest) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.name)))
	b = append(b, r.name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.infos)))
	for _, i := range r.infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// checkName validates an export name: UTF-8 without NUL, at most
// MaxNameLength bytes (proto.md "Conventions").
func checkName(name []byte) error {
	if len(name) > MaxNameLength {
		return fmt.Errorf("export name of %d bytes: %w", len(name), errMalformed)
	}
	if !utf8.Valid(name) {
		return fmt.Errorf("export name is not UTF-8: %w", errMalformed)
	}
	for _, c := range name {
		if c == 0 {
			return fmt.Errorf("export name contains NUL: %w", errMalformed)
		}
	}
	return nil
}

// optionName names an option for logs.
func optionName(opt uint32) string {
	switch opt {
	case optExportName:
		return "EXPORT_NAME"
	case optAbort:
		return "ABORT"
	case optList:
		return "LIST"
	case optStartTLS:
		return "STARTTLS"
	case optInfo:
		return "INFO"
	case optGo:
		return "GO"
	case optStructuredReply:
		return "STRUCTURED_REPLY"
	case optListMetaContext:
		return "LIST_META_CONTEXT"
	case optSetMetaContext:
		return "SET_META_CONTEXT"
	case optExtendedHeaders:
		return "EXTENDED_HEADERS"
	}
	return fmt.Sprintf("option %d", opt)
}

// commandName names a command for logs.
func commandName(typ uint16) string {
	switch typ {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", typ)
}

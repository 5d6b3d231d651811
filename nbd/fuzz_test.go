package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

func FuzzParseRequest(f *testing.F) {
	f.Add(appendRequest(nil, request{typ: cmdWrite, handle: 7, offset: 4096, length: 512}))
	f.Add(appendRequest(nil, request{typ: cmdRead, flags: cmdFlagFUA | cmdFlagDF, offset: 1 << 62, length: 1 << 31}))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		// Round trip: what parses re-encodes to the same header.
		if got := appendRequest(nil, r); !bytes.Equal(got, b[:requestHeaderLen]) {
			t.Fatalf("appendRequest(parseRequest(% x)) = % x", b[:requestHeaderLen], got)
		}
	})
}

func FuzzParseGoRequest(f *testing.F) {
	f.Add(appendGoRequest(nil, goRequest{name: "img@s1", infos: []uint16{infoBlockSize, infoName}}))
	f.Add(appendGoRequest(nil, goRequest{}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseGoRequest(b)
		if err != nil {
			return
		}
		if len(r.name) > MaxNameLength {
			t.Fatalf("accepted a %d-byte name", len(r.name))
		}
		if got := appendGoRequest(nil, r); !bytes.Equal(got, b) {
			t.Fatalf("round trip of % x gave % x", b, got)
		}
	})
}

// FuzzServer feeds arbitrary client bytes to a server connection, through
// the handshake and into transmission, and checks that the server neither
// panics nor hangs: it must end the connection once the input runs out.
func FuzzServer(f *testing.F) {
	hello := binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes)
	opt := func(o uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicOpt)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	goRW := opt(optGo, appendGoRequest(nil, goRequest{name: "rw", infos: []uint16{infoBlockSize}}))
	seed := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(seed(hello, opt(optList, nil), opt(optAbort, nil)))
	f.Add(seed(hello, opt(optStructuredReply, nil), goRW,
		appendRequest(nil, request{typ: cmdWrite, length: 4}), []byte("abcd"),
		appendRequest(nil, request{typ: cmdRead, handle: 1, offset: 2, length: 8}),
		appendRequest(nil, request{typ: cmdWriteZeroes, flags: cmdFlagNoHole, handle: 2, length: 100}),
		appendRequest(nil, request{typ: cmdTrim, handle: 3, offset: 1 << 19, length: 1 << 19}),
		appendRequest(nil, request{typ: cmdFlush, handle: 4}),
		appendRequest(nil, request{typ: cmdDisc})))
	f.Add(seed(hello, opt(optExportName, []byte("ro")), appendRequest(nil, request{typ: cmdWrite, length: 1}), []byte{1}))
	f.Add(seed(hello, opt(optInfo, appendGoRequest(nil, goRequest{name: "secret"})), goRW, bytes.Repeat([]byte{0x25}, 40)))
	res, _, _ := testExports()
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 1<<16 {
			return
		}
		srv := &Server{Resolver: res, Logger: slog.New(slog.DiscardHandler), HandshakeTimeout: 5 * time.Second}
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			srv.newConn(server).serve(context.Background())
			close(done)
		}()
		go io.Copy(io.Discard, client) // take whatever the server says
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		client.Write(in)
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("server connection still running after the client left")
		}
	})
}

package tftp

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseRequest(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		in   string
		want request
		err  bool
	}{
		"plain": {
			in:   "\x00\x01pxelinux.0\x00octet\x00",
			want: request{op: opRRQ, filename: "pxelinux.0", mode: "octet"},
		},
		// iPXE, PXELINUX and U-Boot send lowercase options; RFC 2347
		// makes names case-insensitive, so mixed case is normalised.
		"options mixed case": {
			in: "\x00\x01f\x00OCTET\x00BlkSize\x001468\x00TSIZE\x000\x00",
			want: request{op: opRRQ, filename: "f", mode: "octet",
				opts: []option{{"blksize", "1468"}, {"tsize", "0"}}},
		},
		"u-boot": {
			in: "\x00\x01boot.scr.uimg\x00octet\x00timeout\x005\x00tsize\x000\x00blksize\x001468\x00windowsize\x001\x00",
			want: request{op: opRRQ, filename: "boot.scr.uimg", mode: "octet",
				opts: []option{{"timeout", "5"}, {"tsize", "0"}, {"blksize", "1468"}, {"windowsize", "1"}}},
		},
		"repeated option keeps first": {
			in: "\x00\x01f\x00octet\x00blksize\x001024\x00blksize\x00512\x00",
			want: request{op: opRRQ, filename: "f", mode: "octet",
				opts: []option{{"blksize", "1024"}}},
		},
		"padding and truncated option ignored": {
			in: "\x00\x01f\x00octet\x00tsize\x000\x00\x00\x00\x00blk",
			want: request{op: opRRQ, filename: "f", mode: "octet",
				opts: []option{{"tsize", "0"}}},
		},
		"write": {
			in:   "\x00\x02f\x00netascii\x00",
			want: request{op: opWRQ, filename: "f", mode: "netascii"},
		},
		"empty name parses": {
			in:   "\x00\x01\x00octet\x00",
			want: request{op: opRRQ, mode: "octet"},
		},
		"short":               {in: "\x00", err: true},
		"data opcode":         {in: "\x00\x03\x00\x01abc", err: true},
		"no mode":             {in: "\x00\x01file\x00", err: true},
		"unterminated name":   {in: "\x00\x01file", err: true},
		"unterminated mode":   {in: "\x00\x01file\x00octet", err: true},
		"empty mode":          {in: "\x00\x01file\x00\x00", err: true},
		"oversized":           {in: "\x00\x01" + string(bytes.Repeat([]byte("a"), maxRequestLen)) + "\x00octet\x00", err: true},
		"opcode out of range": {in: "\xff\xff\x00octet\x00", err: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseRequest([]byte(tt.in))
			if tt.err {
				if !errors.Is(err, errMalformed) {
					t.Fatalf("parseRequest(%q) = %+v, %v; want errMalformed", tt.in, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseRequest(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(request{}, option{})); diff != "" {
				t.Errorf("parseRequest(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestBlockSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		value    string
		mtu      int
		overhead int
		want     int
		ack      bool
	}{
		{"1468", 1500, ipv4Overhead, 1468, true},
		{"1472", 1500, ipv4Overhead, 1468, true}, // pin/tftp alone would fragment
		{"1432", 1500, ipv6Overhead, 1432, true},
		{"1468", 1500, ipv6Overhead, 1448, true},
		{"65464", 65536, ipv4Overhead, 65464, true},
		{"70000", 0, ipv4Overhead, 65464, true},
		{"8192", 0, ipv4Overhead, 8192, true},
		{"512", 1500, ipv4Overhead, 512, true},
		{"511", 1500, ipv4Overhead, 512, false},
		{"8", 1500, ipv4Overhead, 512, false},
		{"big", 1500, ipv4Overhead, 512, false},
		{"1400", 576, ipv4Overhead, 544, true},
		{"1400", 300, ipv4Overhead, 512, true},
	}
	for _, tt := range tests {
		got, ack := blockSize(tt.value, tt.mtu, tt.overhead)
		if got != tt.want || ack != tt.ack {
			t.Errorf("blockSize(%q, %d, %d) = %d, %v; want %d, %v", tt.value, tt.mtu, tt.overhead, got, ack, tt.want, tt.ack)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("\x00\x01pxelinux.0\x00octet\x00blksize\x001408\x00tsize\x000\x00"))
	f.Add([]byte("\x00\x02f\x00NetAscii\x00"))
	f.Add([]byte("\x00\x01f\x00octet\x00x\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		// What parses re-encodes to a canonical request that parses to the
		// same thing, and is no longer than the input.
		enc := appendRequest(nil, r)
		if len(enc) > len(b) {
			t.Fatalf("parseRequest(%q) re-encodes to a longer %q", b, enc)
		}
		again, err := parseRequest(enc)
		if err != nil {
			t.Fatalf("parseRequest(appendRequest(%+v)): %v", r, err)
		}
		if diff := cmp.Diff(r, again, cmp.AllowUnexported(request{}, option{})); diff != "" {
			t.Fatalf("round trip of %q mismatch (-first +second):\n%s", b, diff)
		}
	})
}

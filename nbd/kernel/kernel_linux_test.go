package kernel

import (
	"encoding/binary"
	"encoding/hex"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink/nl"
)

// The golden messages are spelled out byte by byte, independently of the
// nl package, in the little-endian order of every arch rackboot boots.
func requireLittleEndian(t *testing.T) {
	t.Helper()
	if nl.NativeEndian() != binary.LittleEndian {
		t.Skip("golden messages are little-endian")
	}
}

// serialize fixes the sequence number, which nl takes from a counter.
func serialize(req *nl.NetlinkRequest) []byte {
	req.Seq = 7
	return req.Serialize()
}

// hdr is a netlink header for a message of n bytes of payload followed by
// a generic netlink header.
func hdr(typ uint16, cmd uint8, payload int) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(16+4+payload))
	b = binary.LittleEndian.AppendUint16(b, typ)
	b = binary.LittleEndian.AppendUint16(b, 0x1|0x4) // NLM_F_REQUEST|NLM_F_ACK
	b = binary.LittleEndian.AppendUint32(b, 7)       // seq
	b = binary.LittleEndian.AppendUint32(b, 0)       // pid
	return append(b, cmd, 1, 0, 0)                   // genlmsghdr: cmd, version, reserved
}

func attr(typ uint16, payload []byte) []byte {
	b := binary.LittleEndian.AppendUint16(nil, uint16(4+len(payload)))
	b = binary.LittleEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func message(typ uint16, cmd uint8, attrs ...[]byte) []byte {
	body := cat(attrs...)
	return append(hdr(typ, cmd, len(body)), body...)
}

const nested = 0x8000

func TestMessages(t *testing.T) {
	requireLittleEndian(t)
	const fam = 0x1d
	tests := map[string]struct {
		req  *nl.NetlinkRequest
		want []byte
	}{
		"get family": {
			req: familyRequest(),
			want: message(0x10, 3, // GENL_ID_CTRL, CTRL_CMD_GETFAMILY, version 2 below
				attr(2, []byte("nbd\x00"))),
		},
		"connect any": {
			req: connectRequest(fam, Config{
				Index: AnyIndex, Size: 1 << 30, BlockSize: 4096, ServerFlags: 0x12d,
				Timeout: 30 * time.Second, DeadConnTimeout: 90 * time.Second,
			}, []int{5}),
			want: message(fam, 1,
				attr(2, u64(1<<30)),
				attr(3, u64(4096)),
				attr(5, u64(0x12d)),
				attr(4, u64(30)),
				attr(8, u64(90)),
				attr(nested|7, attr(nested|1, attr(1, u32(5))))),
		},
		"connect nbd3, two sockets, client flags, timeout rounded up": {
			req: connectRequest(fam, Config{
				Index: 3, Size: 512, ServerFlags: 0x3,
				Timeout: 1500 * time.Millisecond, ClientFlags: DestroyOnDisconnect | DisconnectOnClose,
			}, []int{5, 9}),
			want: message(fam, 1,
				attr(1, u32(3)),
				attr(2, u64(512)),
				attr(5, u64(0x3)),
				attr(4, u64(2)),
				attr(6, u64(3)),
				attr(nested|7, cat(attr(nested|1, attr(1, u32(5))), attr(nested|1, attr(1, u32(9)))))),
		},
		"reconfigure": {
			req: reconfigureRequest(fam, 0, Config{DeadConnTimeout: time.Minute}, []int{11}),
			want: message(fam, 3,
				attr(1, u32(0)),
				attr(8, u64(60)),
				attr(nested|7, attr(nested|1, attr(1, u32(11))))),
		},
		"disconnect": {
			req:  indexRequest(fam, cmdDisconnect, 2),
			want: message(fam, 2, attr(1, u32(2))),
		},
		"status all": {
			req:  indexRequest(fam, cmdStatus, AnyIndex),
			want: message(fam, 5),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			want := tc.want
			if name == "get family" {
				want[17] = 2 // nlctrl speaks version 2
			}
			got := serialize(tc.req)
			if diff := cmp.Diff(hex.Dump(want), hex.Dump(got)); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseReplies(t *testing.T) {
	requireLittleEndian(t)
	genl := func(cmd uint8, attrs ...[]byte) []byte { return append([]byte{cmd, 1, 0, 0}, cat(attrs...)...) }

	idx, err := parseIndexReply([][]byte{genl(cmdConnect, attr(attrIndex, u32(4)))})
	if err != nil || idx != 4 {
		t.Errorf("parseIndexReply = %d, %v; want 4, nil", idx, err)
	}
	if _, err := parseIndexReply([][]byte{genl(cmdConnect)}); err == nil {
		t.Error("parseIndexReply without index: no error")
	}

	item := func(i uint32, c byte) []byte {
		return attr(deviceItem, cat(attr(deviceIndex, u32(i)), attr(deviceConnected, []byte{c})))
	}
	got, err := parseStatusReply([][]byte{genl(cmdStatus, attr(attrDeviceList, cat(item(0, 1), item(1, 0))))})
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{{Index: 0, Connected: true}, {Index: 1}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseStatusReply (-want +got):\n%s", diff)
	}
	if _, err := parseStatusReply([][]byte{{1}}); err == nil {
		t.Error("parseStatusReply of a short message: no error")
	}
}

func TestBlockSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ min, want uint32 }{
		{0, 512},
		{1, 512},
		{512, 512},
		{1000, 1024},
		{4096, 4096},
		{1 << 20, 4096},
	} {
		if got := BlockSize(tc.min); got != tc.want {
			t.Errorf("BlockSize(%d) = %d; want %d", tc.min, got, tc.want)
		}
	}
}

func FuzzParseStatusReply(f *testing.F) {
	f.Add([]byte{5, 1, 0, 0, 12, 0, 9, 0, 8, 0, 1, 0, 4, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4096 {
			return
		}
		parseStatusReply([][]byte{b})
		parseIndexReply([][]byte{b})
	})
}

func TestParseFamilyReply(t *testing.T) {
	requireLittleEndian(t)
	group := func(name string, id uint32) []byte {
		return cat(attr(1, []byte(name+"\x00")), attr(2, u32(id)))
	}
	reply := append([]byte{1, 2, 0, 0}, cat(
		attr(2, []byte("nbd\x00")),
		attr(1, binary.LittleEndian.AppendUint16(nil, 0x1d)),
		attr(nested|7, cat(attr(nested|1, group("other", 3)), attr(nested|2, group("nbd_mc_group", 9)))),
	)...)
	id, g, err := parseFamilyReply([][]byte{reply})
	if err != nil || id != 0x1d || g != 9 {
		t.Errorf("parseFamilyReply = %#x, %d, %v; want 0x1d, 9, nil", id, g, err)
	}
}

func TestParseLinkDead(t *testing.T) {
	requireLittleEndian(t)
	const fam = 0x1d
	// Multicast messages carry no NLM_F_REQUEST; hdr's flags don't matter
	// to the parser.
	dead := func(i uint32) []byte { return message(fam, cmdLinkDead, attr(attrIndex, u32(i))) }
	tests := map[string]struct {
		in   []byte
		want []int
	}{
		"one":          {dead(0), []int{0}},
		"two":          {cat(dead(2), dead(5)), []int{2, 5}},
		"other family": {message(fam+1, cmdLinkDead, attr(attrIndex, u32(1))), nil},
		"other cmd":    {message(fam, cmdStatus, attr(attrIndex, u32(1))), nil},
		"no index":     {message(fam, cmdLinkDead), nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseLinkDead(tc.in, fam)
			if err != nil {
				t.Fatalf("parseLinkDead: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parseLinkDead (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := parseLinkDead(dead(1)[:20], fam); err == nil {
		t.Error("parseLinkDead of a truncated message: no error")
	}
}

func FuzzParseLinkDead(f *testing.F) {
	f.Add(message(0x1d, cmdLinkDead, attr(attrIndex, u32(3))))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4096 {
			return
		}
		parseLinkDead(b, 0x1d)
		parseFamilyReply([][]byte{b})
	})
}

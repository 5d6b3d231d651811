package dhcp

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestWireSize(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		p := &dhcpv4.DHCPv4{OpCode: dhcpv4.OpcodeBootReply, Options: dhcpv4.Options{}}
		for range rng.IntN(12) {
			code := uint8(1 + rng.IntN(254))
			p.Options[code] = make([]byte, rng.IntN(600)) // empty, one piece, or split (RFC 3396)
		}
		if got, want := wireSize(p), len(p.ToBytes()); got != want {
			t.Fatalf("case %d (%d options): wireSize %d; ToBytes %d bytes", i, len(p.Options), got, want)
		}
	}
}

func maxSize(n int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(n)) }

// TestFitReply checks that an OFFER too large for the client's maximum
// message size (option 57) loses the options it didn't ask for first,
// then the least needed of those it did, and fits; and that a client
// taking more gets everything.
func TestFitReply(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	boot := strings.Repeat("b", 100) // fits the file field too
	bootFor := func(n int) Boot {
		return Boot{
			IP:             netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + n)}), // a reservation each: the pool has four addresses
			BootFile:       boot,
			PXELinuxConfig: "pxelinux.cfg/" + strings.Repeat("c", 107),
			PathPrefix:     "/srv/" + strings.Repeat("p", 95),
		}
	}
	asked := []byte{1, 3, 6, 67, 209, 210}
	all := []uint8{1, 3, 6, 7, 28, 51, 53, 54, 58, 59, 67, 209, 210}
	tests := []struct {
		name    string
		opt57   []byte // nil: none sent
		max     int    // bytes of DHCP message
		dropped []uint8
	}{
		{"no option 57", nil, 548, []uint8{7, 28, 58, 59, 67}},
		{"576", maxSize(576), 548, []uint8{7, 28, 58, 59, 67}},
		{"below the legal minimum", maxSize(300), 548, []uint8{7, 28, 58, 59, 67}},
		{"four options short", maxSize(628), 600, []uint8{7, 28, 58, 59}},
		{"1260, as PXE ROMs send", maxSize(1260), 1232, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := map[uint8][]byte{55: asked}
			if tt.opt57 != nil {
				opts[57] = tt.opt57
			}
			ts.booter.set(macN(i+1), bootFor(i))
			p := mustType(t, ts.do(t, discover(macN(i+1), opts)), dhcpv4.MessageTypeOffer)
			if n := len(p.ToBytes()); n > tt.max {
				t.Errorf("OFFER of %d bytes; the client takes %d", n, tt.max)
			}
			for _, code := range all {
				_, has := p.Options[code]
				if want := !slices.Contains(tt.dropped, code); has != want {
					t.Errorf("option %d in the OFFER: %v; want %v", code, has, want)
				}
			}
			if p.BootFileName != boot || p.YourIPAddr.IsUnspecified() {
				t.Errorf("OFFER lost its essentials: file %q, yiaddr %v", p.BootFileName, p.YourIPAddr)
			}
		})
	}
}

// optionCodes lists the option codes of a serialised DHCP message, in
// wire order.
func optionCodes(t *testing.T, b []byte) []uint8 {
	t.Helper()
	var codes []uint8
	for o := b[240:]; len(o) > 0; {
		switch o[0] {
		case 0:
			o = o[1:]
			continue
		case 255:
			return codes
		}
		if len(o) < 2 || len(o) < 2+int(o[1]) {
			t.Fatalf("option %d truncated", o[0])
		}
		codes = append(codes, o[0])
		o = o[2+int(o[1]):]
	}
	t.Fatal("no End option")
	return nil
}

func TestMarshalOrder(t *testing.T) {
	p := &dhcpv4.DHCPv4{
		OpCode:       dhcpv4.OpcodeBootReply,
		ClientHWAddr: macN(1),
		YourIPAddr:   netip.MustParseAddr("10.0.0.7").AsSlice(),
		BootFileName: "lpxelinux.0",
		Options: dhcpv4.Options{
			1: {255, 255, 255, 0}, 3: {10, 0, 0, 254}, 6: {10, 0, 0, 53}, 7: {10, 0, 0, 1},
			12: []byte("board"), 51: {0, 0, 14, 16}, 53: {2}, 54: {10, 0, 0, 1},
			82:  {1, 2, 'a', 'b'},
			209: bytes.Repeat([]byte{'c'}, 300), // split in two pieces
			210: {},                             // empty, still sent
		},
	}
	prl := []byte{6, 209, 3, 53, 99, 1, 82} // 53 and 82 have fixed places; 99 isn't in the reply
	b := marshal(p, prl)
	want := []uint8{53, 54, 6, 209, 209, 3, 1, 7, 12, 51, 210, 82}
	if got := optionCodes(t, b); !slices.Equal(got, want) {
		t.Errorf("options on the wire %v; want %v", got, want)
	}
	if n := len(p.ToBytes()); len(b) != n {
		t.Errorf("marshal made %d bytes; ToBytes %d", len(b), n)
	}
	q, err := dhcpv4.FromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := dhcpv4.FromBytes(p.ToBytes())
	if diff := cmp.Diff(r, q); diff != "" {
		t.Errorf("marshal and ToBytes parse differently (-ToBytes +marshal):\n%s", diff)
	}
}

// BenchmarkMarshal compares a typical PXE OFFER's serialisation in the
// client's option order with the library's, by code.
func BenchmarkMarshal(b *testing.B) {
	ts := newTestServer(b, ModeFull)
	ts.booter.def = Boot{BootFile: "lpxelinux.0", Hostname: "board-7", PXELinuxConfig: "pxelinux.cfg/board-7", PathPrefix: "/tftp/"}
	ts.Logger = slog.New(slog.DiscardHandler)
	prl := []byte{1, 3, 6, 12, 15, 28, 42, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135, 209, 210}
	r := ts.do(b, discover(macN(1), map[uint8][]byte{55: prl}))
	b.Run("ToBytes", func(b *testing.B) {
		for b.Loop() {
			r.pkt.ToBytes()
		}
	})
	b.Run("marshal", func(b *testing.B) {
		for b.Loop() {
			marshal(r.pkt, r.prl)
		}
	})
}

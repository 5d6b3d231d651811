package dhcp

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

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

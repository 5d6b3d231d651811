package lab

import (
	"bufio"
	"net/netip"
	"strings"
	"testing"
)

func TestARPLookup(t *testing.T) {
	const table = `IP address       HW type     Flags       HW address            Mask     Device
10.0.0.11        0x1         0x2         52:54:00:00:01:01     *        br0
10.0.0.12        0x1         0x0         00:00:00:00:00:00     *        br0
10.0.0.111       0x1         0x2         52:54:00:00:01:02     *        br0
`
	tests := map[string]string{"10.0.0.11": "52:54:00:00:01:01", "10.0.0.12": "", "10.0.0.1": "", "10.0.0.111": "52:54:00:00:01:02"}
	for ip, want := range tests {
		mac, ok := arpLookup(bufio.NewScanner(strings.NewReader(table)), netip.MustParseAddr(ip))
		if got := mac.String(); got != want || ok != (want != "") {
			t.Errorf("arpLookup(%s) = %q, %v; want %q", ip, got, ok, want)
		}
	}
}

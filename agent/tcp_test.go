package agent

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// A table as a little-endian machine prints it (every arch rackboot boots).
const tcpTable = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2AFD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 456844 1 0000000000000000 100 0 0 10 0
   1: 0A00630A:C350 0100630A:2A41 01 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 20 4 30 10 -1
   2: 0A00630A:C352 0100630A:2A41 08 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 20 4 30 10 -1
`

const tcp6Table = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000A00630A:C360 0000000000000000FFFF00000100630A:2A41 01 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 20 4 30 10 -1
`

func littleEndian(t *testing.T) {
	t.Helper()
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the golden tables are little-endian")
	}
}

func TestParseTCPTable(t *testing.T) {
	littleEndian(t)
	t.Parallel()
	got, err := parseTCPTable([]byte(tcpTable))
	if err != nil {
		t.Fatal(err)
	}
	want := []tcpConn{
		{netip.MustParseAddrPort("127.0.0.1:11005"), netip.MustParseAddrPort("0.0.0.0:0"), 0x0a},
		{netip.MustParseAddrPort("10.99.0.10:50000"), netip.MustParseAddrPort("10.99.0.1:10817"), 1},
		{netip.MustParseAddrPort("10.99.0.10:50002"), netip.MustParseAddrPort("10.99.0.1:10817"), 8},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("parseTCPTable (-want +got):\n%s", diff)
	}
	for _, bad := range []string{"h\n 0: 0100007F 00000000:0000 0A\n", "h\n 0: 01007F:2AFD 00000000:0000 0A\n", "h\n 0: 0100007F:2AFD\n"} {
		if _, err := parseTCPTable([]byte(bad)); err == nil {
			t.Errorf("parseTCPTable(%q): no error", bad)
		}
	}
}

func TestEstablishedTo(t *testing.T) {
	littleEndian(t)
	t.Parallel()
	proc := t.TempDir()
	os.MkdirAll(filepath.Join(proc, "net"), 0o755)
	// The kernel may print a socket twice when the table changes while
	// it is read; here the established one comes again.
	again := "   3: 0A00630A:C350 0100630A:2A41 01 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 20 4 30 10 -1\n"
	os.WriteFile(filepath.Join(proc, "net/tcp"), []byte(tcpTable+again), 0o644)
	os.WriteFile(filepath.Join(proc, "net/tcp6"), []byte(tcp6Table), 0o644)
	got, err := establishedTo(proc, netip.MustParseAddrPort("10.99.0.1:10817"))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("10.99.0.10:50000"), netip.MustParseAddrPort("10.99.0.10:50016")}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("establishedTo (-want +got):\n%s", diff)
	}
	os.Remove(filepath.Join(proc, "net/tcp6"))
	if got, err := establishedTo(proc, netip.MustParseAddrPort("10.99.0.1:80")); err != nil || len(got) != 0 {
		t.Errorf("establishedTo without tcp6 = %v, %v; want none, nil", got, err)
	}
}

// The real table of this machine parses, and a connection made here shows
// up in it.
func TestEstablishedToLive(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	ln := listen(t)
	c := dialTCP(t, ln.Addr().String())
	defer c.Close()
	remote := netip.MustParseAddrPort(ln.Addr().String())
	got, err := establishedTo("/proc", remote)
	if err != nil {
		t.Fatal(err)
	}
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	if len(got) != 1 || got[0] != local {
		t.Errorf("establishedTo(%s) = %v; want [%s]", remote, got, local)
	}
}

func FuzzParseTCPTable(f *testing.F) {
	f.Add([]byte(tcpTable))
	f.Add([]byte(tcp6Table))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 8192 {
			return
		}
		conns, err := parseTCPTable(b)
		if err != nil {
			return
		}
		for _, c := range conns {
			if !c.Local.IsValid() || !c.Remote.IsValid() {
				t.Errorf("invalid address parsed from %q: %+v", b, c)
			}
		}
	})
}

package agent

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
)

// tcpEstablished is TCP_ESTABLISHED in the st column of /proc/net/tcp.
const tcpEstablished = 0x01

// tcpConn is one socket of /proc/net/tcp or /proc/net/tcp6.
type tcpConn struct {
	Local, Remote netip.AddrPort
	State         uint8
}

// establishedTo returns the local addresses of the established TCP
// connections to remote, from /proc/net/tcp and /proc/net/tcp6 under proc.
// procfs is not the root filesystem, so this never blocks on it.
func establishedTo(proc string, remote netip.AddrPort) ([]netip.AddrPort, error) {
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	var out []netip.AddrPort
	for _, name := range []string{"net/tcp", "net/tcp6"} {
		b, err := os.ReadFile(proc + "/" + name)
		if errors.Is(err, os.ErrNotExist) && name == "net/tcp6" {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		conns, err := parseTCPTable(b)
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", proc, name, err)
		}
		for _, c := range conns {
			if c.State == tcpEstablished && netip.AddrPortFrom(c.Remote.Addr().Unmap(), c.Remote.Port()) == remote {
				// The kernel prints the table a chunk per read, walking
				// it afresh each time: a socket can show up twice when
				// connections come and go meanwhile.
				if l := netip.AddrPortFrom(c.Local.Addr().Unmap(), c.Local.Port()); !slices.Contains(out, l) {
					out = append(out, l)
				}
			}
		}
	}
	return out, nil
}

// parseTCPTable parses /proc/net/tcp or tcp6 (net/ipv4/tcp_ipv4.c
// get_tcp4_sock: "sl local_address rem_address st ..."). Addresses are
// the raw network-order words printed as native-endian hex numbers.
func parseTCPTable(b []byte) ([]tcpConn, error) {
	var out []tcpConn
	sc := bufio.NewScanner(bytes.NewReader(b))
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		f := bytes.Fields(sc.Bytes())
		if len(f) == 0 {
			continue
		}
		if len(f) < 4 {
			return nil, fmt.Errorf("short line %q", sc.Text())
		}
		local, err := parseHexAddrPort(string(f[1]))
		if err != nil {
			return nil, err
		}
		remote, err := parseHexAddrPort(string(f[2]))
		if err != nil {
			return nil, err
		}
		st, err := strconv.ParseUint(string(f[3]), 16, 8)
		if err != nil {
			return nil, fmt.Errorf("state %q: %w", f[3], err)
		}
		out = append(out, tcpConn{Local: local, Remote: remote, State: uint8(st)})
	}
	return out, sc.Err()
}

// parseHexAddrPort parses "0100007F:1F90" (127.0.0.1:8080 on a
// little-endian machine) and its 32-hex-digit IPv6 form.
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	i := bytes.IndexByte([]byte(s), ':')
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("address %q: no port", s)
	}
	raw, err := hex.DecodeString(s[:i])
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q: bad hex address", s)
	}
	port, err := strconv.ParseUint(s[i+1:], 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: bad port", s)
	}
	// Each 32-bit word was printed as a number: undo the native order.
	var addr [16]byte
	for w := 0; w < len(raw)/4; w++ {
		binary.NativeEndian.PutUint32(addr[4*w:], binary.BigEndian.Uint32(raw[4*w:]))
	}
	var a netip.Addr
	if len(raw) == 4 {
		a = netip.AddrFrom4([4]byte(addr[:4]))
	} else {
		a = netip.AddrFrom16(addr)
	}
	return netip.AddrPortFrom(a, uint16(port)), nil
}

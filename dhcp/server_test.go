package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// serveLoopback runs serve (Serve or ServePXE) on a loopback UDP socket
// until the test ends, checks that it then returns nil, and returns the
// socket's address.
func serveLoopback(t *testing.T, serve func(context.Context, net.PacketConn) error) netip.AddrPort {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve returned %v after cancel; want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("serve did not return after cancel")
		}
	})
	return conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestServePXELoopback: a PXE client's ProxyDHCPREQUEST to port 4011 is
// answered back to the client's own address and port, over real sockets.
func TestServePXELoopback(t *testing.T) {
	t.Parallel()
	s := &Server{
		ServerIP: netip.MustParseAddr("127.0.0.1"),
		Booter: BooterFunc(func(_ context.Context, c Client) (Boot, error) {
			return Boot{BootFile: "snp.efi"}, nil
		}),
		Logger: testLogger(t),
	}
	addr := serveLoopback(t, s.ServePXE)
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	req := request(dhcpv4.MessageTypeRequest, macN(1), map[uint8][]byte{60: []byte("PXEClient:Arch:00007:UNDI:003016"), 93: {0, 7}})
	req.ClientIPAddr = net.IP{127, 0, 0, 1}
	replies := exchange(t, client, req, net.UDPAddrFromAddrPort(addr), 1, 5*time.Second)
	if len(replies) != 1 {
		t.Fatalf("no reply from the PXE boot server")
	}
	if r := replies[0]; r.MessageType() != dhcpv4.MessageTypeAck || r.BootFileName != "snp.efi" || string(r.Options[60]) != "PXEClient" {
		t.Errorf("reply %v file %q class %q; want ACK, snp.efi, PXEClient", r.MessageType(), r.BootFileName, r.Options[60])
	}
}

// slowBooter blocks until its context is done.
type slowBooter struct{ entered chan struct{} }

func (b slowBooter) Boot(ctx context.Context, _ Client) (Boot, error) {
	close(b.entered)
	<-ctx.Done()
	return Boot{}, ctx.Err()
}

// TestServeShutdown: cancelling Serve's context stops it promptly even
// with a packet stuck in the Booter, whose context is cancelled too.
func TestServeShutdown(t *testing.T) {
	t.Parallel()
	b := slowBooter{entered: make(chan struct{})}
	s := &Server{ServerIP: netip.MustParseAddr("127.0.0.1"), Booter: b, Logger: testLogger(t), HandleTimeout: time.Minute}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.ServePXE(ctx, conn) }()
	client, err := net.Dial("udp4", conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	req := request(dhcpv4.MessageTypeRequest, macN(1), map[uint8][]byte{60: []byte("PXEClient")})
	if _, err := client.Write(req.ToBytes()); err != nil {
		t.Fatal(err)
	}
	<-b.entered
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServePXE = %v after cancel; want nil", err)
		}
		t.Logf("stopped in %v", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("ServePXE did not return")
	}
}

// stuckBooter blocks on the client stuck until its context is done, and
// boots the others.
type stuckBooter struct {
	stuck   string
	entered chan struct{}
}

func (b stuckBooter) Boot(ctx context.Context, c Client) (Boot, error) {
	if c.MAC.String() == b.stuck {
		close(b.entered)
		<-ctx.Done()
		return Boot{}, ctx.Err()
	}
	return Boot{BootFile: "snp.efi"}, nil
}

// TestServeStuckPacket: a packet whose handling hangs (a store or Booter
// that doesn't answer) doesn't stop the server reading and answering the
// others, though no other packet was queued when it was read.
func TestServeStuckPacket(t *testing.T) {
	t.Parallel()
	b := stuckBooter{stuck: macN(1).String(), entered: make(chan struct{})}
	s := &Server{ServerIP: netip.MustParseAddr("127.0.0.1"), Booter: b, Logger: testLogger(t), HandleTimeout: time.Minute}
	addr := serveLoopback(t, s.ServePXE)
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	pxe := map[uint8][]byte{60: []byte("PXEClient:Arch:00007:UNDI:003016"), 93: {0, 7}}
	stuck := request(dhcpv4.MessageTypeRequest, macN(1), pxe)
	if _, err := client.WriteTo(stuck.ToBytes(), net.UDPAddrFromAddrPort(addr)); err != nil {
		t.Fatal(err)
	}
	<-b.entered
	for i := 2; i <= 4; i++ {
		req := request(dhcpv4.MessageTypeRequest, macN(i), pxe)
		req.ClientIPAddr = net.IP{127, 0, 0, 1}
		if replies := exchange(t, client, req, net.UDPAddrFromAddrPort(addr), 1, 5*time.Second); len(replies) != 1 {
			t.Fatalf("client %d: no reply while another packet is stuck", i)
		}
	}
}

// TestServeConfigError: Serve reports an invalid configuration and closes
// its conn.
func TestServeConfigError(t *testing.T) {
	t.Parallel()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Mode: ModeFull, ServerIP: netip.MustParseAddr("127.0.0.1"), Booter: BooterFunc(nil)}
	if err := s.Serve(t.Context(), conn); err == nil {
		t.Errorf("Serve with no Subnet succeeded")
	}
	if _, err := conn.WriteTo([]byte("x"), conn.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("conn still open after Serve failed: %v", err)
	}
}

// exchange sends p to dst on conn and collects up to want replies with
// p's transaction ID, waiting at most timeout (and retransmitting every
// second, as clients do).
func exchange(t *testing.T, conn net.PacketConn, p *dhcpv4.DHCPv4, dst net.Addr, want int, timeout time.Duration) []*dhcpv4.DHCPv4 {
	t.Helper()
	var got []*dhcpv4.DHCPv4
	seen := make(map[string]bool)
	end := time.Now().Add(timeout)
	buf := make([]byte, maxDatagram)
	for len(got) < want && time.Now().Before(end) {
		if _, err := conn.WriteTo(p.ToBytes(), dst); err != nil {
			t.Fatalf("sending %v: %v", p.MessageType(), err)
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		for len(got) < want {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				break
			}
			r, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || r.OpCode != dhcpv4.OpcodeBootReply || r.TransactionID != p.TransactionID {
				continue
			}
			key := fmt.Sprint(r.ServerIdentifier(), r.MessageType())
			if !seen[key] {
				seen[key] = true
				got = append(got, r)
			}
		}
	}
	return got
}

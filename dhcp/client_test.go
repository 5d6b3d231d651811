package dhcp

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

var testMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// request builds a client packet of type mt with the given raw options.
func request(mt dhcpv4.MessageType, mac net.HardwareAddr, opts map[uint8][]byte) *dhcpv4.DHCPv4 {
	p := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootRequest,
		HWType:        iana.HWTypeEthernet,
		TransactionID: dhcpv4.TransactionID{1, 2, 3, 4},
		ClientIPAddr:  net.IPv4zero.To4(),
		YourIPAddr:    net.IPv4zero.To4(),
		ServerIPAddr:  net.IPv4zero.To4(),
		GatewayIPAddr: net.IPv4zero.To4(),
		ClientHWAddr:  mac,
		Options:       dhcpv4.Options{53: {byte(mt)}},
	}
	for k, v := range opts {
		p.Options[k] = v
	}
	return p
}

func TestClassify(t *testing.T) {
	uuid := make([]byte, 16)
	for i := range uuid {
		uuid[i] = byte(i + 1)
	}
	tests := []struct {
		name string
		opts map[uint8][]byte
		want Client
	}{
		{"plain OS client", nil,
			Client{Firmware: FirmwareOS, Arch: ArchNone}},
		{"x86 BIOS PXE ROM",
			map[uint8][]byte{60: []byte("PXEClient:Arch:00000:UNDI:002001"), 93: {0, 0}, 97: append([]byte{0}, uuid...)},
			Client{Firmware: FirmwareBIOS, Arch: 0, VendorClass: "PXEClient:Arch:00000:UNDI:002001", UUID: uuid}},
		{"EFI IA32", map[uint8][]byte{60: []byte("PXEClient:Arch:00006:UNDI:003016"), 93: {0, 6}},
			Client{Firmware: FirmwareEFI32, Arch: 6, VendorClass: "PXEClient:Arch:00006:UNDI:003016"}},
		{"EFI x64 (7)", map[uint8][]byte{93: {0, 7}},
			Client{Firmware: FirmwareEFIx64, Arch: 7}},
		{"EFI x64 (9)", map[uint8][]byte{93: {0, 9}},
			Client{Firmware: FirmwareEFIx64, Arch: 9}},
		{"EFI ARM32", map[uint8][]byte{93: {0, 10}},
			Client{Firmware: FirmwareEFIARM32, Arch: 10}},
		{"EFI ARM64", map[uint8][]byte{60: []byte("PXEClient:Arch:00011:UNDI:003000"), 93: {0, 11}},
			Client{Firmware: FirmwareEFIARM64, Arch: 11, VendorClass: "PXEClient:Arch:00011:UNDI:003000"}},
		{"iPXE ROM (Debian ipxe-qemu)",
			map[uint8][]byte{60: []byte("PXEClient:Arch:00000:UNDI:002001"), 93: {0, 0}, 77: []byte("iPXE"), 175: {0xb1, 5, 1, 0x1a, 0xf4, 0x10, 0}},
			Client{Firmware: FirmwareIPXE, Arch: 0, VendorClass: "PXEClient:Arch:00000:UNDI:002001", UserClass: []string{"iPXE"}}},
		{"iPXE, RFC 3004 user class", map[uint8][]byte{77: {4, 'i', 'P', 'X', 'E'}, 93: {0, 7}},
			Client{Firmware: FirmwareIPXE, Arch: 7, UserClass: []string{"iPXE"}}},
		{"iPXE known by option 175 only", map[uint8][]byte{175: {}},
			Client{Firmware: FirmwareIPXE, Arch: ArchNone}},
		{"U-Boot arm64 (Debian u-boot-qemu)", map[uint8][]byte{60: []byte("U-Boot.armv8"), 93: {0, 0x16}},
			Client{Firmware: FirmwareUBoot, Arch: 0x16, VendorClass: "U-Boot.armv8"}},
		{"U-Boot armv7, vendor class only", map[uint8][]byte{60: []byte("U-Boot.armv7")},
			Client{Firmware: FirmwareUBoot, Arch: ArchNone, VendorClass: "U-Boot.armv7"}},
		{"U-Boot with PXE vendor class", map[uint8][]byte{60: []byte("PXEClient:Arch:00021:UNDI:003000"), 93: {0, 0x15}},
			Client{Firmware: FirmwareUBoot, Arch: 0x15, VendorClass: "PXEClient:Arch:00021:UNDI:003000"}},
		{"our initramfs", map[uint8][]byte{60: []byte("rackboot-initramfs"), 93: {0, 0x16}},
			Client{Firmware: FirmwareInitramfs, Arch: 0x16, VendorClass: "rackboot-initramfs"}},
		{"unknown PXE arch", map[uint8][]byte{60: []byte("PXEClient:Arch:00016:UNDI:003016"), 93: {0, 16}},
			Client{Firmware: FirmwareUnknown, Arch: 16, VendorClass: "PXEClient:Arch:00016:UNDI:003016"}},
		{"PXEClient without option 93", map[uint8][]byte{60: []byte("PXEClient")},
			Client{Firmware: FirmwareUnknown, Arch: ArchNone, VendorClass: "PXEClient"}},
		{"arch from the vendor class", map[uint8][]byte{60: []byte("PXEClient:Arch:00007:UNDI:003016")},
			Client{Firmware: FirmwareEFIx64, Arch: 7, VendorClass: "PXEClient:Arch:00007:UNDI:003016"}},
		{"U-Boot arch in the vendor class", map[uint8][]byte{60: []byte("PXEClient:Arch:00022:UNDI:003000")},
			Client{Firmware: FirmwareUBoot, Arch: 22, VendorClass: "PXEClient:Arch:00022:UNDI:003000"}},
		{"option 93 wins over the vendor class", map[uint8][]byte{60: []byte("PXEClient:Arch:00007:UNDI:003016"), 93: {0, 11}},
			Client{Firmware: FirmwareEFIARM64, Arch: 11, VendorClass: "PXEClient:Arch:00007:UNDI:003016"}},
		{"malformed vendor class arch", map[uint8][]byte{60: []byte("PXEClient:Arch:0x007:UNDI:003016")},
			Client{Firmware: FirmwareUnknown, Arch: ArchNone, VendorClass: "PXEClient:Arch:0x007:UNDI:003016"}},
		{"malformed option 93 and 97", map[uint8][]byte{93: {7}, 97: {1, 2, 3}},
			Client{Firmware: FirmwareOS, Arch: ArchNone}},
		{"two architectures: first wins", map[uint8][]byte{93: {0, 11, 0, 7}},
			Client{Firmware: FirmwareEFIARM64, Arch: 11}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request(dhcpv4.MessageTypeDiscover, testMAC, tt.opts)
			got := Classify(req, "eth0")
			tt.want.MAC = testMAC
			tt.want.Interface = "eth0"
			if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
				t.Errorf("Classify(%v) mismatch (-want +got):\n%s", tt.opts, diff)
			}
		})
	}
}

func TestClassifyRelay(t *testing.T) {
	req := request(dhcpv4.MessageTypeDiscover, testMAC, nil)
	req.GatewayIPAddr = net.IPv4(10, 9, 8, 7).To4()
	if got, want := Classify(req, "").RelayAddr, netip.MustParseAddr("10.9.8.7"); got != want {
		t.Errorf("Classify(relayed).RelayAddr = %v; want %v", got, want)
	}
}

func TestParseUserClass(t *testing.T) {
	tests := []struct {
		in   []byte
		want []string
	}{
		{nil, nil},
		{[]byte("iPXE"), []string{"iPXE"}},
		{[]byte{4, 'i', 'P', 'X', 'E', 3, 'f', 'o', 'o'}, []string{"iPXE", "foo"}},
		{[]byte{9, 'a'}, []string{"\x09a"}},
		{[]byte{0}, []string{"\x00"}},
	}
	for _, tt := range tests {
		if got := parseUserClass(tt.in); !cmp.Equal(got, tt.want) {
			t.Errorf("parseUserClass(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestFirmwareString(t *testing.T) {
	for f := FirmwareUnknown; f <= FirmwareOS; f++ {
		if s := f.String(); s == "" || s[0] == 'F' {
			t.Errorf("Firmware(%d).String() = %q; want a name", int(f), s)
		}
	}
	if got, want := Firmware(99).String(), "Firmware(99)"; got != want {
		t.Errorf("Firmware(99).String() = %q; want %q", got, want)
	}
}

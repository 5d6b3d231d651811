package dhcp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Client describes the DHCP client a packet came from, as far as DHCP
// tells. The server fills it from the request and hands it to the
// [Booter]; it holds no references into the packet.
type Client struct {
	// MAC is the client hardware address (chaddr).
	MAC net.HardwareAddr
	// Firmware is the kind of client, classified from options 60, 77, 93
	// and 175; see [Firmware].
	Firmware Firmware
	// Arch is the client system architecture from option 93 (RFC 4578
	// section 2.1, IANA "Processor Architecture Types"), else from a
	// vendor class "PXEClient:Arch:xxxxx:...", else [ArchNone]. Only the
	// first of several listed architectures is kept.
	Arch uint16
	// VendorClass is option 60, e.g. "PXEClient:Arch:00000:UNDI:002001"
	// or "U-Boot.armv8".
	VendorClass string
	// UserClass is option 77 (RFC 3004), e.g. ["iPXE"]. iPXE sends a bare
	// string rather than RFC 3004 length-prefixed items; both forms are
	// decoded.
	UserClass []string
	// UUID is the 16-byte client machine identifier from option 97 (RFC
	// 4578 section 2.3, type 0), or nil.
	UUID []byte
	// Interface is the name of the interface the server is bound to
	// (Server.Interface); empty when the server was handed a conn
	// without one.
	Interface string
	// RelayAddr is giaddr when the packet came through a relay agent,
	// else the zero Addr.
	RelayAddr netip.Addr
}

// ArchNone is Client.Arch when the client sent no option 93.
const ArchNone uint16 = 0xffff

// Client system architecture types (option 93) the classifier knows, from
// RFC 4578 section 2.1 and the IANA "Processor Architecture Types"
// registry. RFC 4578 lists 7 as "EFI BC" and 9 as "EFI x86-64"; the
// registry later swapped them, and x86-64 firmware sends either.
const (
	ArchBIOS           uint16 = 0x00 // x86 BIOS (legacy PXE)
	ArchEFIIA32        uint16 = 0x06 // x86 UEFI
	ArchEFIx64         uint16 = 0x07 // x64 UEFI (RFC 4578: EFI BC)
	ArchEFIBC          uint16 = 0x09 // EFI byte code (RFC 4578: EFI x86-64)
	ArchEFIARM32       uint16 = 0x0a // ARM 32-bit UEFI
	ArchEFIARM64       uint16 = 0x0b // ARM 64-bit UEFI
	ArchUBootARM32     uint16 = 0x15 // ARM 32-bit U-Boot
	ArchUBootARM64     uint16 = 0x16 // ARM 64-bit U-Boot
	ArchUBootARM32HTTP uint16 = 0x17 // ARM 32-bit U-Boot, boot from HTTP
	ArchUBootARM64HTTP uint16 = 0x18 // ARM 64-bit U-Boot, boot from HTTP
)

// Firmware is the kind of DHCP client, as classified by [Classify].
type Firmware int

// Firmware kinds.
const (
	// FirmwareUnknown is a client that says it is netbooting (a PXEClient
	// vendor class or an option 93) on an architecture not listed here;
	// look at Client.Arch and Client.VendorClass.
	FirmwareUnknown Firmware = iota
	// FirmwareBIOS is an x86 BIOS PXE ROM (option 93 = 0).
	FirmwareBIOS
	// FirmwareEFI32 is 32-bit x86 UEFI (option 93 = 6).
	FirmwareEFI32
	// FirmwareEFIx64 is x86-64 UEFI (option 93 = 7 or 9).
	FirmwareEFIx64
	// FirmwareEFIARM32 is 32-bit ARM UEFI (option 93 = 10).
	FirmwareEFIARM32
	// FirmwareEFIARM64 is 64-bit ARM UEFI (option 93 = 11).
	FirmwareEFIARM64
	// FirmwareIPXE is iPXE, as a ROM or chainloaded: user class "iPXE"
	// (or "gPXE"), or iPXE's own option 175 in the request. Client.Arch
	// still tells BIOS from UEFI builds.
	FirmwareIPXE
	// FirmwareUBoot is U-Boot: a vendor class starting "U-Boot" (such as
	// "U-Boot.armv8"), or option 93 = 0x15..0x18.
	FirmwareUBoot
	// FirmwareInitramfs is rackboot's own initramfs: vendor class
	// [VendorClassInitramfs].
	FirmwareInitramfs
	// FirmwareOS is a plain DHCP client with no netboot markers, such as
	// the booted operating system.
	FirmwareOS
)

// VendorClassInitramfs is the option 60 value rackboot's initramfs sends.
const VendorClassInitramfs = "rackboot-initramfs"

var firmwareNames = [...]string{
	FirmwareUnknown:   "unknown",
	FirmwareBIOS:      "bios",
	FirmwareEFI32:     "efi32",
	FirmwareEFIx64:    "efi-x64",
	FirmwareEFIARM32:  "efi-arm32",
	FirmwareEFIARM64:  "efi-arm64",
	FirmwareIPXE:      "ipxe",
	FirmwareUBoot:     "u-boot",
	FirmwareInitramfs: "initramfs",
	FirmwareOS:        "os",
}

// String returns a short lowercase name, such as "efi-x64" or "u-boot".
func (f Firmware) String() string {
	if f >= 0 && int(f) < len(firmwareNames) {
		return firmwareNames[f]
	}
	return fmt.Sprintf("Firmware(%d)", int(f))
}

// DHCP option codes used by this package beyond those insomniacslk names.
const (
	optPXELinuxConfig = 209 // RFC 5071 section 5
	optPathPrefix     = 210 // RFC 5071 section 6
	optIPXEEncap      = 175 // iPXE encapsulated options (src/include/ipxe/dhcp.h DHCP_EB_ENCAP)
	optIPXENoPXEDHCP  = 176 // iPXE DHCP_EB_NO_PXEDHCP, inside option 175
	optPXEBootItem    = 71  // PXE boot menu item, inside option 43
	optPXEDiscovery   = 6   // PXE_DISCOVERY_CONTROL, inside option 43
)

// Classify describes the client that sent req. iface becomes
// Client.Interface. It never fails: malformed options are ignored.
//
// The order of the rules matters: our initramfs first, then iPXE (which
// also sends a PXEClient vendor class and option 93), then U-Boot, then
// the option 93 architecture of PXE firmware, then FirmwareOS for clients
// with none of these markers.
func Classify(req *dhcpv4.DHCPv4, iface string) Client {
	c := Client{
		MAC:         append(net.HardwareAddr(nil), req.ClientHWAddr...),
		Arch:        ArchNone,
		VendorClass: string(req.Options.Get(dhcpv4.OptionClassIdentifier)),
		UserClass:   parseUserClass(req.Options.Get(dhcpv4.OptionUserClassInformation)),
		Interface:   iface,
	}
	if a := req.Options.Get(dhcpv4.OptionClientSystemArchitectureType); len(a) >= 2 && len(a)%2 == 0 {
		c.Arch = binary.BigEndian.Uint16(a)
	} else if a, ok := vendorClassArch(c.VendorClass); ok {
		c.Arch = a
	}
	if u := req.Options.Get(dhcpv4.OptionClientMachineIdentifier); len(u) == 17 && u[0] == 0 {
		c.UUID = append([]byte(nil), u[1:]...)
	}
	if gi, ok := netip.AddrFromSlice(req.GatewayIPAddr.To4()); ok && !gi.IsUnspecified() {
		c.RelayAddr = gi
	}
	_, hasIPXEOption := req.Options[optIPXEEncap]
	c.Firmware = classify(c, hasIPXEOption)
	return c
}

func classify(c Client, hasIPXEOption bool) Firmware {
	switch {
	case c.VendorClass == VendorClassInitramfs:
		return FirmwareInitramfs
	case hasIPXEOption || containsFold(c.UserClass, "iPXE") || containsFold(c.UserClass, "gPXE"):
		return FirmwareIPXE
	case hasPrefixFold(c.VendorClass, "U-Boot"),
		c.Arch >= ArchUBootARM32 && c.Arch <= ArchUBootARM64HTTP:
		return FirmwareUBoot
	}
	switch c.Arch {
	case ArchBIOS:
		return FirmwareBIOS
	case ArchEFIIA32:
		return FirmwareEFI32
	case ArchEFIx64, ArchEFIBC:
		return FirmwareEFIx64
	case ArchEFIARM32:
		return FirmwareEFIARM32
	case ArchEFIARM64:
		return FirmwareEFIARM64
	case ArchNone:
		if hasPrefixFold(c.VendorClass, "PXEClient") {
			return FirmwareUnknown
		}
		return FirmwareOS
	}
	return FirmwareUnknown
}

// isPXEClient reports whether the vendor class marks a PXE client (PXE
// specification 2.1, "PXEClient:Arch:xxxxx:UNDI:yyyzzz").
func isPXEClient(vendorClass string) bool {
	return strings.HasPrefix(vendorClass, "PXEClient")
}

// vendorClassArch returns the architecture in a PXE vendor class,
// "PXEClient:Arch:xxxxx:UNDI:yyyzzz" (PXE specification 2.1; xxxxx is
// decimal).
func vendorClassArch(vc string) (uint16, bool) {
	rest, ok := strings.CutPrefix(vc, "PXEClient:Arch:")
	if !ok || len(rest) < 5 || (len(rest) > 5 && rest[5] != ':') {
		return 0, false
	}
	v, err := strconv.ParseUint(rest[:5], 10, 16)
	if err != nil || v == uint64(ArchNone) {
		return 0, false
	}
	return uint16(v), true
}

// parseUserClass decodes option 77. RFC 3004 makes it a list of
// length-prefixed items; iPXE and many others send one bare string, which
// is taken whole when the bytes don't parse as RFC 3004.
func parseUserClass(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	var items []string
	for rest := b; len(rest) > 0; {
		n := int(rest[0])
		if n == 0 || n > len(rest)-1 {
			return []string{string(b)}
		}
		items = append(items, string(rest[1:1+n]))
		rest = rest[1+n:]
	}
	return items
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

package kernel

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Generic netlink names and numbers from include/uapi/linux/nbd-netlink.h.
const (
	familyName = "nbd"
	version    = 1

	cmdConnect     = 1
	cmdDisconnect  = 2
	cmdReconfigure = 3
	cmdLinkDead    = 4
	cmdStatus      = 5

	// mcastGroup is NBD_GENL_MCAST_GROUP_NAME, where the driver sends
	// NBD_CMD_LINK_DEAD.
	mcastGroup = "nbd_mc_group"

	attrIndex           = 1
	attrSizeBytes       = 2
	attrBlockSizeBytes  = 3
	attrTimeout         = 4
	attrServerFlags     = 5
	attrClientFlags     = 6
	attrSockets         = 7
	attrDeadConnTimeout = 8
	attrDeviceList      = 9

	sockItem = 1
	sockFD   = 1

	deviceItem      = 1
	deviceIndex     = 1
	deviceConnected = 2

	// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER.
	nlaTypeMask = 0x3fff
)

// ClientFlags are NBD_ATTR_CLIENT_FLAGS.
type ClientFlags uint64

// Client flags the driver knows.
const (
	// DestroyOnDisconnect removes the device node once it is disconnected
	// (NBD_CFLAG_DESTROY_ON_DISCONNECT).
	DestroyOnDisconnect ClientFlags = 1 << 0
	// DisconnectOnClose disconnects when the last opener closes the
	// device (NBD_CFLAG_DISCONNECT_ON_CLOSE).
	DisconnectOnClose ClientFlags = 1 << 1
)

// AnyIndex asks Connect for the first free device.
const AnyIndex = -1

// ErrNoDriver is returned when the kernel has no "nbd" generic netlink
// family: the nbd module is not loaded (or not built).
var ErrNoDriver = errors.New("no nbd generic netlink family (is the nbd module loaded?)")

// Config describes a connection to the driver. The zero value is not
// valid: Size is required.
type Config struct {
	// Index is the device to use, /dev/nbdIndex, or AnyIndex for the first
	// free one (the driver creates one if none is free).
	Index int
	// Size is the export size in bytes.
	Size uint64
	// BlockSize is the logical block size in bytes; zero means the
	// driver's default (1024). Use [BlockSize] to derive it from the
	// server's minimum block size.
	BlockSize uint32
	// ServerFlags are the export's transmission flags as the server sent
	// them (nbd.FlagReadOnly, nbd.FlagSendFlush, ...): the driver honours
	// READ_ONLY, SEND_FLUSH, SEND_FUA, SEND_TRIM and CAN_MULTI_CONN.
	ServerFlags uint16
	// Timeout is the per-request timeout, in whole seconds. On expiry the
	// driver shuts the request's socket down (a dead link) and resends the
	// request once the device has a live socket again, within
	// DeadConnTimeout. Zero sets none: the block layer's timer (30 s, or
	// /sys/block/nbdN/queue/io_timeout) then only resends requests whose
	// socket was replaced meanwhile, and a slow server is never cut off.
	Timeout time.Duration
	// DeadConnTimeout is how long, in whole seconds, the driver keeps
	// requests waiting for a Reconfigure once every socket is dead; zero
	// fails them at once.
	DeadConnTimeout time.Duration
	// ClientFlags are optional behaviours.
	ClientFlags ClientFlags
}

// Device is one entry of Status.
type Device struct {
	Index int
	// Connected reports that the device is configured (the driver holds a
	// connection config for it), not that its socket is alive: the driver
	// keeps it set while requests wait for a Reconfigure after the
	// connection died. Watch for dead links with a [Monitor].
	Connected bool
}

// BlockSize picks the logical block size to give the driver from the
// server's minimum block size (NBD_INFO_BLOCK_SIZE, zero when the server
// sent none): the smallest power of two the driver accepts (512 to 4096)
// that is at least min. It is deliberately not the preferred size: a
// logical block size above a filesystem's block size (ext4 made with 1 KiB
// blocks on a 4 KiB device) makes the filesystem unmountable.
func BlockSize(min uint32) uint32 {
	bs := uint32(512)
	for bs < 4096 && bs < min {
		bs <<= 1
	}
	return bs
}

// Connect attaches socks, each a connected socket in the NBD transmission
// phase for the same export, to an NBD device and returns its index.
// Afterwards the kernel owns the sockets (Connect leaves them in blocking
// mode); the caller should close its descriptors and not use them again. ctx is checked before the request only: the driver answers
// at once.
func Connect(ctx context.Context, cfg Config, socks ...syscall.Conn) (int, error) {
	if cfg.Size == 0 {
		return 0, errors.New("nbd connect: size is required")
	}
	if len(socks) == 0 {
		return 0, errors.New("nbd connect: no sockets")
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	family, err := familyID()
	if err != nil {
		return 0, err
	}
	var index int
	err = withFDs(socks, func(fds []int) error {
		req := connectRequest(family, cfg, fds)
		msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
		if err != nil {
			return fmt.Errorf("nbd connect: %w", err)
		}
		index, err = parseIndexReply(msgs)
		return err
	})
	return index, err
}

// Reconfigure hands device index new sockets (negotiated for the same
// export) after its connections died, within its DeadConnTimeout. Size,
// BlockSize, Timeout, DeadConnTimeout and ClientFlags are applied when
// non-zero; Index and ServerFlags are ignored.
func Reconfigure(ctx context.Context, index int, cfg Config, socks ...syscall.Conn) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	family, err := familyID()
	if err != nil {
		return err
	}
	return withFDs(socks, func(fds []int) error {
		if _, err := reconfigureRequest(family, index, cfg, fds).Execute(unix.NETLINK_GENERIC, 0); err != nil {
			return fmt.Errorf("nbd reconfigure nbd%d: %w", index, err)
		}
		return nil
	})
}

// Disconnect disconnects device index: outstanding requests fail and the
// sockets are shut down.
func Disconnect(ctx context.Context, index int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	family, err := familyID()
	if err != nil {
		return err
	}
	if _, err := indexRequest(family, cmdDisconnect, index).Execute(unix.NETLINK_GENERIC, 0); err != nil {
		return fmt.Errorf("nbd disconnect nbd%d: %w", index, err)
	}
	return nil
}

// Status reports device index, or every device for AnyIndex.
func Status(ctx context.Context, index int) ([]Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	family, err := familyID()
	if err != nil {
		return nil, err
	}
	msgs, err := indexRequest(family, cmdStatus, index).Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return nil, fmt.Errorf("nbd status: %w", err)
	}
	return parseStatusReply(msgs)
}

// withFDs calls f with the descriptors of socks, valid during the call.
func withFDs(socks []syscall.Conn, f func([]int) error) error {
	fds := make([]int, 0, len(socks))
	var inner error
	var rec func(i int) error
	rec = func(i int) error {
		if i == len(socks) {
			inner = f(fds)
			return nil
		}
		rc, err := socks[i].SyscallConn()
		if err != nil {
			return fmt.Errorf("socket %d: %w", i, err)
		}
		var recErr error
		if err := rc.Control(func(fd uintptr) {
			// The driver doesn't care, but nbd-client hands it blocking
			// sockets, and nothing in this process reads them again.
			unix.SetNonblock(int(fd), false)
			fds = append(fds, int(fd))
			recErr = rec(i + 1)
		}); err != nil {
			return fmt.Errorf("socket %d: %w", i, err)
		}
		return recErr
	}
	if err := rec(0); err != nil {
		return err
	}
	return inner
}

// familyID resolves the "nbd" family with CTRL_CMD_GETFAMILY.
func familyID() (uint16, error) {
	id, _, err := resolveFamily()
	return id, err
}

// resolveFamily returns the "nbd" family's ID and the ID of its multicast
// group (zero if the driver has none).
func resolveFamily() (id uint16, group uint32, err error) {
	msgs, err := familyRequest().Execute(unix.NETLINK_GENERIC, 0)
	if errors.Is(err, unix.ENOENT) {
		return 0, 0, ErrNoDriver
	}
	if err != nil {
		return 0, 0, fmt.Errorf("resolving generic netlink family %q: %w", familyName, err)
	}
	id, group, err = parseFamilyReply(msgs)
	if err != nil {
		return 0, 0, err
	}
	if id == 0 {
		return 0, 0, ErrNoDriver
	}
	return id, group, nil
}

// parseFamilyReply finds the family ID and the ID of the nbd multicast
// group in a CTRL_CMD_GETFAMILY reply.
func parseFamilyReply(msgs [][]byte) (id uint16, group uint32, err error) {
	for _, m := range msgs {
		attrs, err := parseGenl(m)
		if err != nil {
			return 0, 0, err
		}
		for _, a := range attrs {
			switch a.typ {
			case nl.GENL_CTRL_ATTR_FAMILY_ID:
				if len(a.value) >= 2 {
					id = nl.NativeEndian().Uint16(a.value)
				}
			case nl.GENL_CTRL_ATTR_MCAST_GROUPS:
				groups, err := parseAttrs(a.value)
				if err != nil {
					return 0, 0, fmt.Errorf("parsing multicast groups: %w", err)
				}
				for _, g := range groups {
					fields, err := parseAttrs(g.value)
					if err != nil {
						return 0, 0, fmt.Errorf("parsing multicast group: %w", err)
					}
					var name string
					var gid uint32
					for _, f := range fields {
						switch f.typ {
						case nl.GENL_CTRL_ATTR_MCAST_GRP_NAME:
							name = strings.TrimRight(string(f.value), "\x00")
						case nl.GENL_CTRL_ATTR_MCAST_GRP_ID:
							if len(f.value) >= 4 {
								gid = nl.NativeEndian().Uint32(f.value)
							}
						}
					}
					if name == mcastGroup {
						group = gid
					}
				}
			}
		}
	}
	return id, group, nil
}

func familyRequest() *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(nl.GENL_ID_CTRL, unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: nl.GENL_CTRL_CMD_GETFAMILY, Version: nl.GENL_CTRL_VERSION})
	req.AddData(nl.NewRtAttr(nl.GENL_CTRL_ATTR_FAMILY_NAME, nl.ZeroTerminated(familyName)))
	return req
}

func connectRequest(family uint16, cfg Config, fds []int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(family), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmdConnect, Version: version})
	if cfg.Index >= 0 {
		req.AddData(nl.NewRtAttr(attrIndex, nl.Uint32Attr(uint32(cfg.Index))))
	}
	req.AddData(nl.NewRtAttr(attrSizeBytes, nl.Uint64Attr(cfg.Size)))
	if cfg.BlockSize != 0 {
		req.AddData(nl.NewRtAttr(attrBlockSizeBytes, nl.Uint64Attr(uint64(cfg.BlockSize))))
	}
	req.AddData(nl.NewRtAttr(attrServerFlags, nl.Uint64Attr(uint64(cfg.ServerFlags))))
	addCommon(req, cfg)
	req.AddData(socketsAttr(fds))
	return req
}

func reconfigureRequest(family uint16, index int, cfg Config, fds []int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(family), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmdReconfigure, Version: version})
	req.AddData(nl.NewRtAttr(attrIndex, nl.Uint32Attr(uint32(index))))
	if cfg.Size != 0 {
		req.AddData(nl.NewRtAttr(attrSizeBytes, nl.Uint64Attr(cfg.Size)))
	}
	if cfg.BlockSize != 0 {
		req.AddData(nl.NewRtAttr(attrBlockSizeBytes, nl.Uint64Attr(uint64(cfg.BlockSize))))
	}
	addCommon(req, cfg)
	if len(fds) > 0 {
		req.AddData(socketsAttr(fds))
	}
	return req
}

// addCommon adds the timeouts and client flags, when set.
func addCommon(req *nl.NetlinkRequest, cfg Config) {
	if s := seconds(cfg.Timeout); s != 0 {
		req.AddData(nl.NewRtAttr(attrTimeout, nl.Uint64Attr(s)))
	}
	if s := seconds(cfg.DeadConnTimeout); s != 0 {
		req.AddData(nl.NewRtAttr(attrDeadConnTimeout, nl.Uint64Attr(s)))
	}
	if cfg.ClientFlags != 0 {
		req.AddData(nl.NewRtAttr(attrClientFlags, nl.Uint64Attr(uint64(cfg.ClientFlags))))
	}
}

// seconds rounds d up to whole seconds, the driver's unit.
func seconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second)
}

// socketsAttr is NBD_ATTR_SOCKETS: one nested NBD_SOCK_ITEM holding
// NBD_SOCK_FD per descriptor.
func socketsAttr(fds []int) *nl.RtAttr {
	socks := nl.NewRtAttr(unix.NLA_F_NESTED|attrSockets, nil)
	for _, fd := range fds {
		item := socks.AddRtAttr(unix.NLA_F_NESTED|sockItem, nil)
		item.AddRtAttr(sockFD, nl.Uint32Attr(uint32(fd)))
	}
	return socks
}

func indexRequest(family uint16, cmd uint8, index int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(family), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmd, Version: version})
	if index >= 0 {
		req.AddData(nl.NewRtAttr(attrIndex, nl.Uint32Attr(uint32(index))))
	}
	return req
}

// attribute is one netlink attribute: its type without the flag bits,
// and its payload.
type attribute struct {
	typ   uint16
	value []byte
}

// parseAttrs splits b into netlink attributes. (nl.ParseRouteAttr panics
// on some malformed input.)
func parseAttrs(b []byte) ([]attribute, error) {
	var out []attribute
	for len(b) >= 4 {
		n := int(nl.NativeEndian().Uint16(b))
		if n < 4 || n > len(b) {
			return nil, fmt.Errorf("netlink attribute of length %d in %d bytes", n, len(b))
		}
		out = append(out, attribute{typ: nl.NativeEndian().Uint16(b[2:]) & nlaTypeMask, value: b[4:n]})
		n = (n + 3) &^ 3
		if n > len(b) {
			n = len(b)
		}
		b = b[n:]
	}
	return out, nil
}

// parseGenl parses the attributes of a generic netlink message body.
func parseGenl(m []byte) ([]attribute, error) {
	if len(m) < nl.SizeofGenlmsg {
		return nil, fmt.Errorf("generic netlink message of %d bytes", len(m))
	}
	return parseAttrs(m[nl.SizeofGenlmsg:])
}

// parseIndexReply finds NBD_ATTR_INDEX in the reply to NBD_CMD_CONNECT.
func parseIndexReply(msgs [][]byte) (int, error) {
	for _, m := range msgs {
		attrs, err := parseGenl(m)
		if err != nil {
			return 0, err
		}
		for _, a := range attrs {
			if a.typ == attrIndex && len(a.value) >= 4 {
				return int(nl.NativeEndian().Uint32(a.value)), nil
			}
		}
	}
	return 0, errors.New("nbd connect: reply without a device index")
}

// parseStatusReply decodes NBD_ATTR_DEVICE_LIST.
func parseStatusReply(msgs [][]byte) ([]Device, error) {
	var out []Device
	for _, m := range msgs {
		attrs, err := parseGenl(m)
		if err != nil {
			return nil, err
		}
		for _, a := range attrs {
			if a.typ != attrDeviceList {
				continue
			}
			items, err := parseAttrs(a.value)
			if err != nil {
				return nil, fmt.Errorf("parsing NBD device list: %w", err)
			}
			for _, it := range items {
				if it.typ != deviceItem {
					continue
				}
				fields, err := parseAttrs(it.value)
				if err != nil {
					return nil, fmt.Errorf("parsing NBD device item: %w", err)
				}
				var d Device
				for _, f := range fields {
					switch f.typ {
					case deviceIndex:
						if len(f.value) >= 4 {
							d.Index = int(nl.NativeEndian().Uint32(f.value))
						}
					case deviceConnected:
						d.Connected = len(f.value) >= 1 && f.value[0] != 0
					}
				}
				out = append(out, d)
			}
		}
	}
	return out, nil
}

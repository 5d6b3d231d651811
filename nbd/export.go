package nbd

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
)

// Device is the storage behind an export. ReadAt and WriteAt are called
// concurrently, from many connections at once when the export allows
// multi-conn; Sync makes every completed write durable.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Size is the device size in bytes. It doesn't change while the device
	// is exported.
	Size() int64
	// Sync makes every write completed before the call durable.
	Sync() error
}

// Trimmer is implemented by devices that can give space back
// (NBD_CMD_TRIM). After Trim the range may read as anything until it is
// written again.
type Trimmer interface {
	Trim(off, length int64) error
}

// Zeroer is implemented by devices that can zero a range without being sent
// the zeroes (NBD_CMD_WRITE_ZEROES). When punch is false (the client set
// NBD_CMD_FLAG_NO_HOLE) the device must keep the range allocated. Devices
// without it get zero-filled writes.
type Zeroer interface {
	WriteZeroes(off, length int64, punch bool) error
}

// FileReader is implemented by devices whose data lives in files, so that
// the server can send reads with sendfile(2) instead of copying them
// through its own memory. ReadFiles calls send for each piece of
// [off, off+n) in order, with the file and file offset that hold it; the
// files stay open during the call. A device that can't serve a range this
// way returns an error wrapping errors.ErrUnsupported before calling send,
// and the server reads the range into memory instead.
type FileReader interface {
	ReadFiles(off, n int64, send func(f *os.File, off, n int64) error) error
}

// ErrReadOnly is returned by devices that refuse writes. The server answers
// it with EPERM.
var ErrReadOnly = errors.New("read-only device")

// Export is what a Resolver hands the server for one client.
type Export struct {
	// Name is the export name as the client asked for it.
	Name string
	// LogName is what the server's log calls the export; empty means
	// Name. Set it when the name is a secret, such as a capability
	// token, that must not reach a log.
	LogName string
	// Description is an optional human-readable text (NBD_INFO_DESCRIPTION).
	Description string
	// Device serves the data.
	Device Device
	// ReadOnly makes the server advertise NBD_FLAG_READ_ONLY and answer
	// every write, trim and zero request with EPERM before it reaches the
	// device.
	ReadOnly bool
	// MultiConn advertises NBD_FLAG_CAN_MULTI_CONN: set it only when every
	// connection to this name shares one Device, so that a flush on one
	// connection covers writes completed on the others.
	MultiConn bool
	// Release, if not nil, is called once when the connection that opened
	// the export is done with it (after its last reply and a final Sync),
	// or right after an NBD_OPT_INFO reply.
	Release func()
}

// ExportInfo describes one export in an NBD_OPT_LIST reply.
type ExportInfo struct {
	Name        string
	Description string
}

// Resolver is the policy the server asks: which exports a client at peer
// may see and open. The nbd package knows nothing about boards or sessions.
//
// Open returns an error wrapping fs.ErrNotExist for an unknown name (the
// client gets NBD_REP_ERR_UNKNOWN) and fs.ErrPermission for a name the peer
// may not open (NBD_REP_ERR_POLICY). A resolver that must not reveal which
// names exist should answer fs.ErrNotExist for both.
type Resolver interface {
	Open(ctx context.Context, name string, peer netip.AddrPort) (*Export, error)
	List(ctx context.Context, peer netip.AddrPort) ([]ExportInfo, error)
}

package lab

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// ErrNotFound is returned by Store lookups that find nothing; it wraps
// fs.ErrNotExist through the errors the Lab returns.
var ErrNotFound = errors.New("not found")

// Store persists the lab's state: boards, leases, boots and their events,
// and the unknown machines that asked to boot. SQLite implements it
// (OpenSQLite); the SQL is written to run on PostgreSQL too, so that
// several appliances (one per VLAN) can later share one database.
//
// Implementations are safe for concurrent use.
type Store interface {
	// SyncBoards makes the stored board list equal to boards (the
	// configuration is the source of truth), keeping the state of boards
	// that remain.
	SyncBoards(ctx context.Context, boards []Board) error

	// UpdateLeases applies lease changes in order and atomically (all or
	// none): a change records or replaces the lease of its MAC, or with
	// Delete drops it. Leases lists them all.
	UpdateLeases(ctx context.Context, changes []LeaseChange) error
	Leases(ctx context.Context) ([]Lease, error)

	// SeenUnknown records (or updates) machines that are not in the
	// inventory, in one transaction; Unknown lists them, newest first.
	SeenUnknown(ctx context.Context, us ...Unknown) error
	Unknown(ctx context.Context) ([]Unknown, error)

	// StartBoot records a new boot and ends the board's previous one,
	// atomically. It returns the boot with its ID set.
	StartBoot(ctx context.Context, b BootRecord) (BootRecord, error)
	// BootByToken returns the boot with that token, or ErrNotFound.
	BootByToken(ctx context.Context, token string) (BootRecord, error)
	// CurrentBoot returns the board's newest boot, or ErrNotFound.
	CurrentBoot(ctx context.Context, board string) (BootRecord, error)
	// Boots returns the newest boots, newest first, at most limit.
	Boots(ctx context.Context, limit int) ([]BootRecord, error)

	// AddEvent appends an event to a boot's timeline; Events returns a
	// boot's events in order.
	AddEvent(ctx context.Context, e Event) error
	Events(ctx context.Context, bootID int64) ([]Event, error)

	Close() error
}

// Lease is a DHCP lease as the lab keeps it.
type Lease struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Expiry   time.Time
	Hostname string
}

// LeaseChange is one change of UpdateLeases: Lease saved, or, with
// Delete, the lease of Lease.MAC dropped.
type LeaseChange struct {
	Lease  Lease
	Delete bool
}

// Unknown is a machine that tried to boot and is not in the inventory:
// listed for enrollment, never silently ignored.
type Unknown struct {
	MAC         net.HardwareAddr
	Firmware    string
	Arch        string
	VendorClass string
	IP          netip.Addr
	FirstSeen   time.Time
	LastSeen    time.Time
	Count       int
}

// BootRecord is one boot of one board: from the moment its firmware
// fetched its boot config until its next boot.
type BootRecord struct {
	ID      int64
	Board   string
	Token   string
	Session string // copy-on-write session name
	Image   string
	IP      netip.Addr // the address the boot config went to; the only one served for this boot
	MAC     net.HardwareAddr
	Started time.Time
	Ended   time.Time // zero while current
	// Identify is set for an unknown machine booted to report itself.
	Identify bool
}

// Event is one entry of a boot's timeline.
type Event struct {
	BootID   int64
	Time     time.Time
	Kind     string // dhcp, tftp, http, nbd, step
	Name     string // file, step name, DHCP message
	Status   string // ok, failed, running...
	Bytes    int64
	Duration time.Duration
	Error    string
	Detail   string // JSON, from a report
}

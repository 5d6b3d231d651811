package dhcp

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Lease is an address bound to a client in full mode.
type Lease struct {
	// MAC is the client hardware address the lease belongs to.
	MAC net.HardwareAddr
	// IP is the leased IPv4 address.
	IP netip.Addr
	// Expiry is when the lease ends. Released leases keep their entry
	// (so the client gets the same address back) with Expiry set to the
	// time of release.
	Expiry time.Time
	// Hostname is the name the Booter gave the client (option 12), or
	// the name the client sent, or empty.
	Hostname string
}

// LeaseStore persists full-mode leases. The server keeps its working set
// in memory: it calls LoadLeases once when it starts serving, and
// UpdateLeases to record bindings before it acknowledges them (RFC 2131
// section 4.3.2 asks servers to commit a binding before sending the
// DHCPACK; if UpdateLeases fails the server sends nothing and the client
// retries) and to drop the leases of clients that release or decline
// their address or whose address a reservation takes over. Leases are
// keyed by MAC: a saved lease replaces any lease with the same MAC.
//
// Concurrent handshakes share one UpdateLeases call (group commit): the
// server makes one call at a time, with every change queued since the
// previous one, in the order it made them. LoadLeases may return expired
// leases, which the server uses to give returning clients their previous
// address.
type LeaseStore interface {
	LoadLeases(ctx context.Context) ([]Lease, error)
	// UpdateLeases applies changes in order and atomically: all or none.
	UpdateLeases(ctx context.Context, changes []LeaseChange) error
}

// LeaseChange is one change to the stored leases: Lease saved, or, with
// Delete, the lease of Lease.MAC dropped.
type LeaseChange struct {
	Lease  Lease
	Delete bool
}

// leaseJournal writes lease changes to a LeaseStore with group commit.
// Changes are queued in the order the lease table made them (add is
// called under the table's lock); whoever then waits first writes
// everything queued so far in one UpdateLeases call while later changes
// gather for the next, so that 64 handshakes in flight cost a few
// database commits instead of 64.
type leaseJournal struct {
	mu      sync.Mutex
	cond    sync.Cond // signalled when a write ends
	open    *leaseBatch
	writing bool
}

// leaseBatch is changes written by one UpdateLeases call.
type leaseBatch struct {
	changes []LeaseChange
	done    bool
	err     error
}

// add queues changes and returns the batch that will carry them.
func (j *leaseJournal) add(changes ...LeaseChange) *leaseBatch {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.open == nil {
		j.open = &leaseBatch{}
	}
	j.open.changes = append(j.open.changes, changes...)
	return j.open
}

// wait returns when b is written, writing it (with whatever else is
// queued) itself unless another write is under way, and b's error.
func (j *leaseJournal) wait(ctx context.Context, store LeaseStore, b *leaseBatch) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.cond.L == nil {
		j.cond.L = &j.mu
	}
	for !b.done {
		if j.writing {
			j.cond.Wait()
			continue
		}
		// Not done and nobody writing: b is still the open batch.
		cur := j.open
		j.open, j.writing = nil, true
		j.mu.Unlock()
		// Without ctx's deadline: the batch carries other handlers'
		// changes, which one handler giving up must not fail (the store
		// bounds its own waits). And a context that can't end spares
		// the SQLite driver a watcher goroutine per statement.
		err := store.UpdateLeases(context.WithoutCancel(ctx), cur.changes)
		j.mu.Lock()
		cur.done, cur.err, j.writing = true, err, false
		j.cond.Broadcast()
	}
	return b.err
}

// bindState is the state of an address in the lease table.
type bindState uint8

const (
	// stateOffered: offered in a DHCPOFFER, held until the offer times out.
	stateOffered bindState = iota
	// stateBound: acknowledged (and persisted).
	stateBound
	// stateDeclined: a client reported the address in use (DHCPDECLINE);
	// nobody gets it until the hold expires.
	stateDeclined
)

// binding is one row of the lease table.
type binding struct {
	mac      string // string(hardware address); "" for declined addresses
	ip       netip.Addr
	expiry   time.Time
	hostname string
	state    bindState

	// While its lease is being saved: the binding it replaced for its
	// MAC, and whether the save failed (see Server.undo).
	prev    *binding
	unsaved bool
}

func (b *binding) lease() Lease {
	return Lease{MAC: net.HardwareAddr(b.mac), IP: b.ip, Expiry: b.expiry, Hostname: b.hostname}
}

// activeAt reports whether b still holds its address at now.
func (b *binding) activeAt(now time.Time) bool { return now.Before(b.expiry) }

// leaseTable indexes bindings by MAC and by address. Each MAC has at most
// one binding and each address at most one. Its size is bounded by the
// pool size plus the number of reserved addresses seen, because every
// binding holds an address. It is not safe for concurrent use.
type leaseTable struct {
	byMAC map[string]*binding
	byIP  map[netip.Addr]*binding
	// cursor is where pick looks for a free address first: after the
	// last one it gave, or the lowest one freed since.
	cursor uint32
}

func (t *leaseTable) init() {
	if t.byMAC == nil {
		t.byMAC = make(map[string]*binding)
		t.byIP = make(map[netip.Addr]*binding)
	}
}

// remove drops b from both indexes.
func (t *leaseTable) remove(b *binding) {
	if t.byIP[b.ip] == b {
		delete(t.byIP, b.ip)
		if v := u32(b.ip); b.ip.Is4() && v < t.cursor {
			t.cursor = v
		}
	}
	if b.mac != "" && t.byMAC[b.mac] == b {
		delete(t.byMAC, b.mac)
	}
}

// put installs b, displacing the MAC's previous binding and the address's
// previous holder. It returns the bound binding of another MAC it
// displaced, if any, so that the caller can delete it from the store.
func (t *leaseTable) put(b *binding) (displaced *binding) {
	t.init()
	if old := t.byIP[b.ip]; old != nil {
		t.remove(old)
		if old.mac != b.mac && old.mac != "" && old.state == stateBound {
			displaced = old
		}
	}
	if b.mac != "" {
		if old := t.byMAC[b.mac]; old != nil {
			t.remove(old)
		}
		t.byMAC[b.mac] = b
	}
	t.byIP[b.ip] = b
	return displaced
}

// freeFor reports whether ip can be given to mac at now: nobody holds it,
// mac itself holds it, or the holder's time is up.
func (t *leaseTable) freeFor(ip netip.Addr, mac string, now time.Time) bool {
	b := t.byIP[ip]
	return b == nil || (b.mac == mac && b.state != stateDeclined) || !b.activeAt(now)
}

// LeaseFor returns the current, unexpired lease of mac (full mode).
// It is safe for concurrent use.
func (s *Server) LeaseFor(mac net.HardwareAddr) (Lease, bool) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.table.byMAC[string(mac)]
	if b == nil || b.state != stateBound || !b.activeAt(now) {
		return Lease{}, false
	}
	return b.lease(), true
}

// MACFor returns the hardware address holding a current, unexpired lease
// on ip (full mode). It is safe for concurrent use.
func (s *Server) MACFor(ip netip.Addr) (net.HardwareAddr, bool) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.table.byIP[ip.Unmap()]
	if b == nil || b.state != stateBound || !b.activeAt(now) {
		return nil, false
	}
	return net.HardwareAddr(b.mac), true
}

// ActiveLeases returns a snapshot of all current, unexpired leases, in no
// particular order. It is safe for concurrent use.
func (s *Server) ActiveLeases() []Lease {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Lease
	for _, b := range s.table.byMAC {
		if b.state == stateBound && b.activeAt(now) {
			out = append(out, b.lease())
		}
	}
	return out
}

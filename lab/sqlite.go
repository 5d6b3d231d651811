package lab

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"time"

	_ "modernc.org/sqlite" // pure-Go SQLite: no cgo, the binary stays static
)

// migrations are the schema versions, applied in order, each once. Never
// edit a released one: append a new one. The SQL keeps to what SQLite and
// PostgreSQL share ($N placeholders, BIGINT times in Unix nanoseconds,
// TEXT addresses).
var migrations = []string{
	1: `
CREATE TABLE boards (
	name       TEXT PRIMARY KEY,
	mac        TEXT NOT NULL UNIQUE,
	arch       TEXT NOT NULL,
	ip         TEXT NOT NULL DEFAULT '',
	image      TEXT NOT NULL,
	state      TEXT NOT NULL DEFAULT 'idle',
	updated_ns BIGINT NOT NULL
);
CREATE TABLE leases (
	mac       TEXT PRIMARY KEY,
	ip        TEXT NOT NULL UNIQUE,
	expiry_ns BIGINT NOT NULL,
	hostname  TEXT NOT NULL DEFAULT ''
);
CREATE TABLE unknown_machines (
	mac           TEXT PRIMARY KEY,
	firmware      TEXT NOT NULL,
	arch          TEXT NOT NULL,
	vendor_class  TEXT NOT NULL,
	ip            TEXT NOT NULL,
	first_seen_ns BIGINT NOT NULL,
	last_seen_ns  BIGINT NOT NULL,
	seen          INTEGER NOT NULL
);
CREATE TABLE boots (
	id         INTEGER PRIMARY KEY,
	board      TEXT NOT NULL,
	token      TEXT NOT NULL UNIQUE,
	session    TEXT NOT NULL,
	image      TEXT NOT NULL,
	ip         TEXT NOT NULL,
	mac        TEXT NOT NULL,
	identify   INTEGER NOT NULL DEFAULT 0,
	started_ns BIGINT NOT NULL,
	ended_ns   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX boots_board ON boots (board, id);
CREATE TABLE events (
	id      INTEGER PRIMARY KEY,
	boot_id BIGINT NOT NULL REFERENCES boots (id),
	time_ns BIGINT NOT NULL,
	kind    TEXT NOT NULL,
	name    TEXT NOT NULL,
	status  TEXT NOT NULL,
	bytes   BIGINT NOT NULL,
	dur_ns  BIGINT NOT NULL,
	error   TEXT NOT NULL
);
CREATE INDEX events_boot ON events (boot_id, id);
`,
	2: `ALTER TABLE events ADD COLUMN detail TEXT NOT NULL DEFAULT ''`,
}

// SQLite is the Store on a SQLite database file.
type SQLite struct {
	db *sql.DB

	// Prepared statements of the DHCP hot path.
	deleteLeaseIP, saveLease, deleteLease, seenUnknown *sql.Stmt
}

// OpenSQLite opens (creating it if needed) the database at path and brings
// its schema up to date. It refuses a database newer than this program.
func OpenSQLite(ctx context.Context, path string) (*SQLite, error) {
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("opening state database: %w", err)
	}
	s := &SQLite{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	if err := s.prepare(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	return s, nil
}

// SchemaVersion is the schema version this program writes.
func SchemaVersion() int { return len(migrations) - 1 }

func (s *SQLite) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ns BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("creating migrations table: %w", err)
	}
	var have int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	if have > SchemaVersion() {
		return fmt.Errorf("schema version %d is newer than this rackboot's %d", have, SchemaVersion())
	}
	for v := have + 1; v <= SchemaVersion(); v++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_ns) VALUES ($1, $2)`, v, time.Now().UnixNano()); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", v, err)
		}
	}
	return nil
}

// Close closes the database.
func (s *SQLite) Close() error { return s.db.Close() }

func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func parseAddr(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

func parseMAC(s string) net.HardwareAddr {
	m, _ := net.ParseMAC(s)
	return m
}

// SyncBoards implements Store.
func (s *SQLite) SyncBoards(ctx context.Context, boards []Board) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	names := make(map[string]bool)
	now := time.Now().UnixNano()
	for _, b := range boards {
		names[b.Name] = true
		if _, err := tx.ExecContext(ctx, `
INSERT INTO boards (name, mac, arch, ip, image, updated_ns) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name) DO UPDATE SET mac = excluded.mac, arch = excluded.arch, ip = excluded.ip,
	image = excluded.image, updated_ns = excluded.updated_ns`,
			b.Name, b.MAC.String(), string(b.Arch), addrString(b.IP), b.Image, now); err != nil {
			return fmt.Errorf("saving board %s: %w", b.Name, err)
		}
	}
	rows, err := tx.QueryContext(ctx, `SELECT name FROM boards`)
	if err != nil {
		return err
	}
	var gone []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return err
		}
		if !names[n] {
			gone = append(gone, n)
		}
	}
	rows.Close()
	for _, n := range gone {
		if _, err := tx.ExecContext(ctx, `DELETE FROM boards WHERE name = $1`, n); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// SQL of the statements the DHCP server runs on every handshake, prepared
// once (parsing them took as long as running them).
const (
	sqlDeleteLeaseIP = `DELETE FROM leases WHERE ip = $1 AND mac <> $2`
	sqlSaveLease     = `
INSERT INTO leases (mac, ip, expiry_ns, hostname) VALUES ($1, $2, $3, $4)
ON CONFLICT (mac) DO UPDATE SET ip = excluded.ip, expiry_ns = excluded.expiry_ns, hostname = excluded.hostname`
	sqlDeleteLease = `DELETE FROM leases WHERE mac = $1`
	sqlSeenUnknown = `
INSERT INTO unknown_machines (mac, firmware, arch, vendor_class, ip, first_seen_ns, last_seen_ns, seen)
VALUES ($1, $2, $3, $4, $5, $6, $6, 1)
ON CONFLICT (mac) DO UPDATE SET firmware = excluded.firmware, arch = excluded.arch,
	vendor_class = excluded.vendor_class,
	ip = CASE WHEN excluded.ip = '' THEN unknown_machines.ip ELSE excluded.ip END,
	last_seen_ns = excluded.last_seen_ns, seen = unknown_machines.seen + 1`
)

func (s *SQLite) prepare(ctx context.Context) error {
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{
		{&s.deleteLeaseIP, sqlDeleteLeaseIP},
		{&s.saveLease, sqlSaveLease},
		{&s.deleteLease, sqlDeleteLease},
		{&s.seenUnknown, sqlSeenUnknown},
	} {
		st, err := s.db.PrepareContext(ctx, p.sql)
		if err != nil {
			return fmt.Errorf("preparing %q: %w", p.sql, err)
		}
		*p.stmt = st
	}
	return nil
}

// UpdateLeases implements Store.
//
// A single change, the usual batch of a DHCP server with one handshake in
// flight, first runs as one statement in SQLite's own implicit
// transaction: atomic by itself, and without the cost of BEGIN and COMMIT
// (a third of the store's time per lease). A save that would take an
// address another MAC holds breaks the ip column's UNIQUE constraint and
// changes nothing; it then goes the transactional way, which frees the
// address first.
func (s *SQLite) UpdateLeases(ctx context.Context, changes []LeaseChange) error {
	if len(changes) == 1 && s.updateLease(ctx, changes[0]) == nil {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	del := tx.StmtContext(ctx, s.deleteLease)
	delIP := tx.StmtContext(ctx, s.deleteLeaseIP)
	save := tx.StmtContext(ctx, s.saveLease)
	for _, c := range changes {
		l := c.Lease
		if c.Delete {
			if _, err := del.ExecContext(ctx, l.MAC.String()); err != nil {
				return fmt.Errorf("deleting lease of %s: %w", l.MAC, err)
			}
			continue
		}
		// An address belongs to one MAC: a new lease of it replaces any other.
		if _, err := delIP.ExecContext(ctx, l.IP.String(), l.MAC.String()); err != nil {
			return fmt.Errorf("saving lease of %s: %w", l.MAC, err)
		}
		if _, err := save.ExecContext(ctx, l.MAC.String(), l.IP.String(), ns(l.Expiry), l.Hostname); err != nil {
			return fmt.Errorf("saving lease of %s: %w", l.MAC, err)
		}
	}
	return tx.Commit()
}

// updateLease applies c in one statement, without freeing its address
// from another MAC.
func (s *SQLite) updateLease(ctx context.Context, c LeaseChange) error {
	l := c.Lease
	if c.Delete {
		_, err := s.deleteLease.ExecContext(ctx, l.MAC.String())
		return err
	}
	_, err := s.saveLease.ExecContext(ctx, l.MAC.String(), l.IP.String(), ns(l.Expiry), l.Hostname)
	return err
}

// Leases implements Store.
func (s *SQLite) Leases(ctx context.Context) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT mac, ip, expiry_ns, hostname FROM leases ORDER BY ip`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		var mac, ip, host string
		var exp int64
		if err := rows.Scan(&mac, &ip, &exp, &host); err != nil {
			return nil, err
		}
		out = append(out, Lease{MAC: parseMAC(mac), IP: parseAddr(ip), Expiry: fromNS(exp), Hostname: host})
	}
	return out, rows.Err()
}

// SeenUnknown implements Store.
func (s *SQLite) SeenUnknown(ctx context.Context, us ...Unknown) error {
	if len(us) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	st := tx.StmtContext(ctx, s.seenUnknown)
	for _, u := range us {
		if _, err := st.ExecContext(ctx, u.MAC.String(), u.Firmware, u.Arch, u.VendorClass, addrString(u.IP), ns(u.LastSeen)); err != nil {
			return fmt.Errorf("recording unknown machine %s: %w", u.MAC, err)
		}
	}
	return tx.Commit()
}

// Unknown implements Store.
func (s *SQLite) Unknown(ctx context.Context) ([]Unknown, error) {
	rows, err := s.db.QueryContext(ctx, `
SELECT mac, firmware, arch, vendor_class, ip, first_seen_ns, last_seen_ns, seen
FROM unknown_machines ORDER BY last_seen_ns DESC`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Unknown
	for rows.Next() {
		var u Unknown
		var mac, ip string
		var first, last int64
		if err := rows.Scan(&mac, &u.Firmware, &u.Arch, &u.VendorClass, &ip, &first, &last, &u.Count); err != nil {
			return nil, err
		}
		u.MAC, u.IP, u.FirstSeen, u.LastSeen = parseMAC(mac), parseAddr(ip), fromNS(first), fromNS(last)
		out = append(out, u)
	}
	return out, rows.Err()
}

const bootColumns = `id, board, token, session, image, ip, mac, identify, started_ns, ended_ns`

func scanBoot(row interface{ Scan(...any) error }) (BootRecord, error) {
	var b BootRecord
	var ip, mac string
	var identify int
	var started, ended int64
	if err := row.Scan(&b.ID, &b.Board, &b.Token, &b.Session, &b.Image, &ip, &mac, &identify, &started, &ended); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return BootRecord{}, ErrNotFound
		}
		return BootRecord{}, err
	}
	b.IP, b.MAC, b.Identify = parseAddr(ip), parseMAC(mac), identify != 0
	b.Started, b.Ended = fromNS(started), fromNS(ended)
	return b, nil
}

// StartBoot implements Store.
func (s *SQLite) StartBoot(ctx context.Context, b BootRecord) (BootRecord, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return BootRecord{}, err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE boots SET ended_ns = $1 WHERE board = $2 AND ended_ns = 0`, ns(b.Started), b.Board); err != nil {
		return BootRecord{}, fmt.Errorf("ending previous boot of %s: %w", b.Board, err)
	}
	identify := 0
	if b.Identify {
		identify = 1
	}
	err = tx.QueryRowContext(ctx, `
INSERT INTO boots (board, token, session, image, ip, mac, identify, started_ns) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id`, b.Board, b.Token, b.Session, b.Image, addrString(b.IP), b.MAC.String(), identify, ns(b.Started)).Scan(&b.ID)
	if err != nil {
		return BootRecord{}, fmt.Errorf("recording boot of %s: %w", b.Board, err)
	}
	return b, tx.Commit()
}

// BootByToken implements Store.
func (s *SQLite) BootByToken(ctx context.Context, token string) (BootRecord, error) {
	return scanBoot(s.db.QueryRowContext(ctx, `SELECT `+bootColumns+` FROM boots WHERE token = $1`, token))
}

// CurrentBoot implements Store.
func (s *SQLite) CurrentBoot(ctx context.Context, board string) (BootRecord, error) {
	return scanBoot(s.db.QueryRowContext(ctx, `SELECT `+bootColumns+` FROM boots WHERE board = $1 ORDER BY id DESC LIMIT 1`, board))
}

// Boots implements Store.
func (s *SQLite) Boots(ctx context.Context, limit int) ([]BootRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+bootColumns+` FROM boots ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []BootRecord
	for rows.Next() {
		b, err := scanBoot(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// AddEvent implements Store.
func (s *SQLite) AddEvent(ctx context.Context, e Event) error {
	_, err := s.db.ExecContext(ctx, `
INSERT INTO events (boot_id, time_ns, kind, name, status, bytes, dur_ns, error, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		e.BootID, ns(e.Time), e.Kind, e.Name, e.Status, e.Bytes, int64(e.Duration), e.Error, e.Detail)
	return err
}

// Events implements Store.
func (s *SQLite) Events(ctx context.Context, bootID int64) ([]Event, error) {
	rows, err := s.db.QueryContext(ctx, `
SELECT boot_id, time_ns, kind, name, status, bytes, dur_ns, error, detail FROM events WHERE boot_id = $1 ORDER BY id`, bootID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var t, d int64
		if err := rows.Scan(&e.BootID, &t, &e.Kind, &e.Name, &e.Status, &e.Bytes, &d, &e.Error, &e.Detail); err != nil {
			return nil, err
		}
		e.Time, e.Duration = fromNS(t), time.Duration(d)
		out = append(out, e)
	}
	return out, rows.Err()
}

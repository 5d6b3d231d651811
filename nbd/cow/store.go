package cow

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Errors returned by Store methods.
var (
	// ErrSessionBusy is returned when another process holds the session
	// open (Open, Discard) or this process does (DiscardSession).
	ErrSessionBusy = errors.New("session in use")
	// ErrBaseChanged is returned when a session is reopened over a base
	// image other than the one it was created on.
	ErrBaseChanged = errors.New("base image differs from the session's")
	// ErrStoreLocked is returned by OpenStore when another process serves
	// the same state directory.
	ErrStoreLocked = errors.New("state directory in use by another process")
)

var sessionNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,254}$`)

// ValidSessionName reports whether name can name a session: 1 to 255
// characters from [A-Za-z0-9._@+-], starting with a letter or digit.
func ValidSessionName(name string) bool { return sessionNameRE.MatchString(name) }

// SessionSpec describes a session being created.
type SessionSpec struct {
	// Owner groups sessions (in the appliance, the board); DiscardOlder
	// works per owner.
	Owner string
	// Image names the image the session layers, for listings.
	Image string
}

// SessionInfo describes a stored session.
type SessionInfo struct {
	Name     string    `json:"name"`
	Owner    string    `json:"owner"`
	Image    string    `json:"image"`
	BasePath string    `json:"base_path"`
	BaseID   string    `json:"base_id"`
	Seq      uint64    `json:"seq"`
	Created  time.Time `json:"created"`
	// DiskBytes is the space the layer takes on disk (allocated blocks).
	DiskBytes int64 `json:"-"`
	// Handles is the number of open handles in this process.
	Handles int `json:"-"`
}

const (
	sessionsDir  = "sessions"
	infoName     = "session.json"
	lockName     = "lock"
	newPrefix    = ".new-"
	trashPrefix  = ".trash-"
	storeLockNam = ".lock"
)

// Store keeps write layers, one per named session, under a state
// directory, and shares one open Device among every handle of a session in
// this process. A session lives until it is discarded: across reconnects
// and across restarts of the process. It is safe for concurrent use.
//
// Layout: DIR/sessions/NAME/{session.json,data,map,lock}. A process holds
// an exclusive flock on a session's lock file while the session is open,
// so another process can't discard it under a client's feet; OpenStore
// holds one on DIR/sessions/.lock so that two servers can't share a
// directory.
type Store struct {
	dir  string
	opts Options
	lock *os.File

	mu   sync.Mutex
	open map[string]*openSession
	// leaving holds the sessions being closed or discarded, each with a
	// channel closed when that is done. Closing a Device waits for its
	// requests, and a read stuck sending to a client that stopped
	// reading holds it for the server's write timeout: that wait (and
	// the final fsync) happen without mu, so the rest of the store
	// carries on, and requests for the name wait for the channel.
	leaving map[string]chan struct{}
	nextSeq uint64
}

type openSession struct {
	dev   *Device
	lock  *os.File
	info  SessionInfo
	refs  int
	dying bool
}

// Session is one handle on an open session's Device. Close it when done.
type Session struct {
	*Device
	store *Store
	name  string
	o     *openSession
	once  sync.Once
}

// Name returns the session's name.
func (h *Session) Name() string { return h.name }

// Close releases the handle; the last one syncs and closes the layer.
func (h *Session) Close() error {
	var err error
	h.once.Do(func() { err = h.store.release(h.name, h.o) })
	return err
}

// OpenStore opens (creating it if needed) the session store in dir, locks
// it for this process and removes what interrupted creations and discards
// left behind.
func OpenStore(dir string, opts Options) (*Store, error) {
	if _, err := chunkShift(opts.ChunkSize); err != nil {
		return nil, err
	}
	root := filepath.Join(dir, sessionsDir)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("creating session store: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(root, storeLockNam), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening session store lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("session store %s: %w", dir, ErrStoreLocked)
	}
	s := &Store{dir: root, opts: opts, lock: lock, open: make(map[string]*openSession), leaving: make(map[string]chan struct{})}
	entries, err := os.ReadDir(root)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("reading session store: %w", err)
	}
	for _, e := range entries {
		n := e.Name()
		switch {
		case len(n) > len(newPrefix) && n[:len(newPrefix)] == newPrefix,
			len(n) > len(trashPrefix) && n[:len(trashPrefix)] == trashPrefix:
			os.RemoveAll(filepath.Join(root, n))
		case e.IsDir() && ValidSessionName(n):
			if info, err := readInfo(filepath.Join(root, n)); err == nil {
				s.nextSeq = max(s.nextSeq, info.Seq)
			}
		}
	}
	return s, nil
}

func readInfo(dir string) (SessionInfo, error) {
	b, err := os.ReadFile(filepath.Join(dir, infoName))
	if err != nil {
		return SessionInfo{}, err
	}
	var info SessionInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return SessionInfo{}, fmt.Errorf("%s: %w", filepath.Join(dir, infoName), err)
	}
	return info, nil
}

func baseID(b Base) string {
	if i, ok := b.(interface{ Identity() string }); ok {
		return i.Identity()
	}
	return fmt.Sprintf("size=%d", b.Size())
}

func basePath(b Base) string {
	if p, ok := b.(interface{ Path() string }); ok {
		return p.Path()
	}
	return ""
}

// Info returns what the store knows of a session, or an error wrapping
// fs.ErrNotExist.
func (s *Store) Info(name string) (SessionInfo, error) {
	if !ValidSessionName(name) {
		return SessionInfo{}, fmt.Errorf("session %q: %w", name, fs.ErrNotExist)
	}
	s.mu.Lock()
	s.awaitLeft(name)
	if o := s.open[name]; o != nil && !o.dying {
		info := o.info
		info.Handles = o.refs
		s.mu.Unlock()
		return info, nil
	}
	s.mu.Unlock()
	info, err := readInfo(filepath.Join(s.dir, name))
	if err != nil {
		return SessionInfo{}, fmt.Errorf("session %q: %w", name, err)
	}
	return info, nil
}

// Open returns a handle on the named session over base, creating the
// session if it doesn't exist. Reopening a session over a different base
// fails with ErrBaseChanged; a session another process holds fails with
// ErrSessionBusy.
func (s *Store) Open(name string, base Base, spec SessionSpec) (*Session, error) {
	if !ValidSessionName(name) {
		return nil, fmt.Errorf("session name %q: %w", name, fs.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.awaitLeft(name)
	if o := s.open[name]; o != nil {
		if o.info.BaseID != baseID(base) {
			return nil, fmt.Errorf("session %q: %w", name, ErrBaseChanged)
		}
		o.refs++
		return &Session{Device: o.dev, store: s, name: name, o: o}, nil
	}
	dir := filepath.Join(s.dir, name)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := s.create(name, base, spec); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	lock, err := lockSession(dir)
	if err != nil {
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	info, err := readInfo(dir)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	if info.BaseID != baseID(base) {
		lock.Close()
		return nil, fmt.Errorf("session %q made over %s (%s), not %s (%s): %w",
			name, info.BasePath, info.BaseID, basePath(base), baseID(base), ErrBaseChanged)
	}
	dev, err := Open(base, dir, s.opts)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	o := &openSession{dev: dev, lock: lock, info: info, refs: 1}
	s.open[name] = o
	return &Session{Device: dev, store: s, name: name, o: o}, nil
}

// lockSession takes the session's flock and checks that the directory
// wasn't discarded while we waited for it.
// flockSession takes f's exclusive lock, trying again for a moment while
// it is held. A flock belongs to the open file description, and a child
// this process forks (any exec.Command, in any goroutine) shares the
// descriptions until it execs: a session closed a moment ago can look
// held by that child for the few milliseconds of a fork. Another process
// that really holds the session holds it for longer than the retries.
func flockSession(f *os.File) error {
	wait := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) || wait > 64*time.Millisecond {
			return err
		}
		time.Sleep(wait)
		wait *= 2
	}
}

func lockSession(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	if err := flockSession(f); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrSessionBusy
		}
		return nil, fmt.Errorf("locking session: %w", err)
	}
	var held, now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &now) != nil || held.Ino != now.Ino || held.Dev != now.Dev {
		f.Close()
		return nil, fmt.Errorf("session discarded while opening: %w", fs.ErrNotExist)
	}
	return f, nil
}

// create makes a session directory atomically: everything is written in a
// temporary directory that is renamed into place. The caller holds s.mu.
func (s *Store) create(name string, base Base, spec SessionSpec) error {
	tmp, err := os.MkdirTemp(s.dir, newPrefix)
	if err != nil {
		return fmt.Errorf("creating session %q: %w", name, err)
	}
	defer os.RemoveAll(tmp) // no-op after the rename
	s.nextSeq++
	info := SessionInfo{
		Name: name, Owner: spec.Owner, Image: spec.Image,
		BasePath: basePath(base), BaseID: baseID(base),
		Seq: s.nextSeq, Created: time.Now().UTC(),
	}
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(tmp, infoName), append(b, '\n')); err != nil {
		return fmt.Errorf("creating session %q: %w", name, err)
	}
	if err := writeFileSync(filepath.Join(tmp, lockName), nil); err != nil {
		return fmt.Errorf("creating session %q: %w", name, err)
	}
	dev, err := Create(base, tmp, s.opts)
	if err != nil {
		return fmt.Errorf("creating session %q: %w", name, err)
	}
	if err := dev.Close(); err != nil {
		return fmt.Errorf("creating session %q: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, name)); err != nil {
		return fmt.Errorf("creating session %q: %w", name, err)
	}
	return OSFS{}.SyncDir(s.dir)
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	return errors.Join(err, f.Sync(), f.Close())
}

// awaitLeft waits until no session of that name is leaving. The caller
// holds s.mu, which is released while waiting.
func (s *Store) awaitLeft(name string) {
	for {
		ch := s.leaving[name]
		if ch == nil {
			return
		}
		s.mu.Unlock()
		<-ch
		s.mu.Lock()
	}
}

// leave marks name as leaving and returns the function that ends that.
// The caller holds s.mu and has removed the name from s.open.
func (s *Store) leave(name string) func() {
	ch := make(chan struct{})
	s.leaving[name] = ch
	return func() {
		s.mu.Lock()
		delete(s.leaving, name)
		s.mu.Unlock()
		close(ch)
	}
}

func (s *Store) release(name string, o *openSession) error {
	s.mu.Lock()
	o.refs--
	if o.refs > 0 || o.dying || s.open[name] != o {
		s.mu.Unlock()
		return nil
	}
	delete(s.open, name)
	done := s.leave(name)
	s.mu.Unlock()
	defer done()
	err := o.dev.Close()
	o.lock.Close()
	return err
}

// List returns every session, oldest first, with its size on disk.
func (s *Store) List() ([]SessionInfo, error) {
	out, err := listDir(s.dir)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range out {
		if o := s.open[out[i].Name]; o != nil {
			out[i].Handles = o.refs
		}
	}
	return out, nil
}

// ListSessions lists the sessions of the store in dir without opening it,
// so it works beside the process serving them.
func ListSessions(dir string) ([]SessionInfo, error) {
	return listDir(filepath.Join(dir, sessionsDir))
}

func listDir(root string) ([]SessionInfo, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("listing sessions: %w", err)
	}
	var out []SessionInfo
	for _, e := range entries {
		if !e.IsDir() || !ValidSessionName(e.Name()) {
			continue
		}
		dir := filepath.Join(root, e.Name())
		info, err := readInfo(dir)
		if err != nil {
			continue // discarded meanwhile, or not a session
		}
		info.DiskBytes = diskUsage(dir)
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, nil
}

// diskUsage returns the allocated bytes of the files in dir.
func diskUsage(dir string) int64 {
	var n int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		}
	}
	return n
}

// Discard deletes a session and its writes. Handles open in this process
// are cut off: their requests fail from now on. A session another process
// holds open fails with ErrSessionBusy. Discarding a session that doesn't
// exist returns an error wrapping fs.ErrNotExist. Discard waits for the
// session's requests in flight; other sessions carry on meanwhile, and an
// Open of the same name waits for the discard and creates a new session.
func (s *Store) Discard(name string) error {
	if !ValidSessionName(name) {
		return fmt.Errorf("session %q: %w", name, fs.ErrNotExist)
	}
	s.mu.Lock()
	s.awaitLeft(name)
	o := s.open[name]
	if o != nil {
		o.dying = true
		delete(s.open, name)
	}
	done := s.leave(name)
	s.mu.Unlock()
	defer done()
	var lock *os.File
	if o != nil {
		o.dev.abandon() // waits for the session's requests
		lock = o.lock
	} else {
		l, err := lockSession(filepath.Join(s.dir, name))
		if err != nil {
			return fmt.Errorf("discarding session %q: %w", name, err)
		}
		lock = l
	}
	defer lock.Close()
	return discardDir(s.dir, name)
}

// discardDir renames a session directory out of the way (the atomic step:
// the session is gone) and then deletes it.
func discardDir(root, name string) error {
	trash, err := os.MkdirTemp(root, trashPrefix)
	if err != nil {
		return fmt.Errorf("discarding session %q: %w", name, err)
	}
	dst := filepath.Join(trash, name)
	if err := os.Rename(filepath.Join(root, name), dst); err != nil {
		os.Remove(trash)
		return fmt.Errorf("discarding session %q: %w", name, err)
	}
	if err := (OSFS{}).SyncDir(root); err != nil {
		return fmt.Errorf("discarding session %q: %w", name, err)
	}
	return os.RemoveAll(trash)
}

// DiscardOlder discards every session of owner except the newest one and
// returns the names it discarded.
func (s *Store) DiscardOlder(owner string) ([]string, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	var mine []SessionInfo
	for _, info := range all {
		if info.Owner == owner {
			mine = append(mine, info)
		}
	}
	if len(mine) < 2 {
		return nil, nil
	}
	var done []string
	var errs []error
	for _, info := range mine[:len(mine)-1] { // List is oldest first
		if err := s.Discard(info.Name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		done = append(done, info.Name)
	}
	return done, errors.Join(errs...)
}

// Close syncs and closes every open session and unlocks the store.
// Handles still open fail their requests afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.leaving) > 0 { // closes and discards still finishing
		for name := range s.leaving {
			s.awaitLeft(name)
			break
		}
	}
	var errs []error
	for name, o := range s.open {
		errs = append(errs, o.dev.Close())
		o.lock.Close()
		delete(s.open, name)
	}
	errs = append(errs, s.lock.Close())
	return errors.Join(errs...)
}

// DiscardSession deletes a session of the store in dir from outside the
// process serving it. It fails with ErrSessionBusy while a client has the
// session open.
func DiscardSession(dir, name string) error {
	if !ValidSessionName(name) {
		return fmt.Errorf("session %q: %w", name, fs.ErrNotExist)
	}
	root := filepath.Join(dir, sessionsDir)
	lock, err := lockSession(filepath.Join(root, name))
	if err != nil {
		return fmt.Errorf("discarding session %q: %w", name, err)
	}
	defer lock.Close()
	return discardDir(root, name)
}

package cow

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestDiscardWaitingForReaderDoesNotStallStore discards a session while
// one of its reads is stuck sending (sendfile to a client that stopped
// reading holds the device for up to the server's write timeout).
// Discard waits for that read, but other sessions must open, list and
// close meanwhile; an Open of the discarded name waits for the discard and
// gets a fresh session.
func TestDiscardWaitingForReaderDoesNotStallStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	imgPath := filepath.Join(dir, "img")
	if err := os.WriteFile(imgPath, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := OpenImage(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	s, err := OpenStore(filepath.Join(dir, "state"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Open("a", img, SessionSpec{Owner: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt([]byte("old"), 1<<19); err != nil {
		t.Fatal(err)
	}

	sending, release := make(chan struct{}), make(chan struct{})
	readDone := make(chan error, 1)
	go func() {
		readDone <- a.ReadFiles(0, 64<<10, func(*os.File, int64, int64) error {
			close(sending)
			<-release // the socket is full and the peer gone
			return nil
		})
	}()
	<-sending
	discarded := make(chan error, 1)
	go func() { discarded <- s.Discard("a") }()
	// Discard is waiting for the read once it holds off new readers.
	for a.life.TryRLock() {
		a.life.RUnlock()
		runtime.Gosched()
	}
	reopened := make(chan *Session, 1)
	go func() {
		a2, err := s.Open("a", img, SessionSpec{Owner: "x"})
		if err != nil {
			t.Errorf("reopening a session after its discard: %v", err)
		}
		reopened <- a2
	}()

	others := make(chan error, 1)
	go func() {
		b, err := s.Open("b", img, SessionSpec{Owner: "y"})
		if err != nil {
			others <- err
			return
		}
		if err := b.Close(); err != nil {
			others <- err
			return
		}
		_, err = s.List()
		others <- err
	}()
	select {
	case err := <-others:
		if err != nil {
			t.Errorf("opening, closing and listing other sessions: %v", err)
		}
	case <-time.After(10 * time.Second): // a failure only: the pass doesn't wait
		t.Error("opening another session waited for a stalled read of a session being discarded")
	}

	close(release)
	if err := <-readDone; err != nil {
		t.Errorf("ReadFiles begun before the discard: %v", err)
	}
	if err := <-discarded; err != nil {
		t.Errorf("Discard: %v", err)
	}
	if _, err := a.WriteAt([]byte("new"), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("WriteAt on a discarded session's handle: %v; want os.ErrClosed", err)
	}
	a.Close()
	if a2 := <-reopened; a2 != nil {
		if n := a2.Allocated(); n != 0 {
			t.Errorf("session reopened after its discard holds %d bytes; want a fresh one", n)
		}
		a2.Close()
	}
	if _, err := s.Info("b"); err != nil {
		t.Errorf("Info(b): %v", err)
	}
	if err := s.Discard("c"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Discard(c) = %v; want fs.ErrNotExist", err)
	}
}

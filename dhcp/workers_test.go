package dhcp

import (
	"sync"
	"testing"
	"time"
)

// fakeSocket drives readers with scripted reads. Each read takes the
// next step; it checks that only one worker reads at a time.
type fakeSocket struct {
	t     *testing.T
	mu    sync.Mutex
	steps []func(released func(bool)) bool
	calls int
	in    int // reads that haven't released yet
}

func (f *fakeSocket) read(released func(bool)) bool {
	f.mu.Lock()
	if f.in++; f.in > 1 {
		f.t.Errorf("%d workers read the socket at once", f.in)
	}
	i := f.calls
	f.calls++
	f.mu.Unlock()
	if i >= len(f.steps) {
		f.t.Errorf("read %d: more reads than scripted", i+1)
		return false
	}
	return f.steps[i](func(queued bool) {
		f.mu.Lock()
		f.in--
		f.mu.Unlock()
		released(queued)
	})
}

// runReaders runs r and fails the test if it hasn't returned within a
// minute.
func runReaders(t *testing.T, r *readers) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		r.run()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("readers didn't return")
	}
}

// TestReadersQueuedAllBusy: with one worker allowed, a packet read while
// others wait is answered, and the same worker reads on.
func TestReadersQueuedAllBusy(t *testing.T) {
	f := &fakeSocket{t: t}
	answered := false
	f.steps = []func(func(bool)) bool{
		func(released func(bool)) bool { released(true); answered = true; return true },
		func(func(bool)) bool { return false },
	}
	r := &readers{max: 1, read: f.read}
	runReaders(t, r)
	if !answered || f.calls != 2 || r.workers != 1 {
		t.Errorf("answered %v, %d reads by %d workers; want the packet answered, 2 reads by 1 worker", answered, f.calls, r.workers)
	}
}

// TestReadersQueuedHandOff: a packet read while others wait hands the
// socket to a new worker before it is answered.
func TestReadersQueuedHandOff(t *testing.T) {
	f := &fakeSocket{t: t}
	second := make(chan struct{})
	f.steps = []func(func(bool)) bool{
		func(released func(bool)) bool {
			released(true)
			<-second // answered only once another worker has read
			return true
		},
		func(released func(bool)) bool { released(false); close(second); return true },
		func(func(bool)) bool { return false },
	}
	runReaders(t, &readers{max: 4, read: f.read})
	if f.calls != 3 {
		t.Errorf("%d reads, want 3", f.calls)
	}
}

// TestReadersStalledAnswer: an answer that hangs with nothing queued has
// the watcher hand the socket over, and the end of the socket ends the
// hung worker's wait too.
func TestReadersStalledAnswer(t *testing.T) {
	f := &fakeSocket{t: t}
	hung := make(chan struct{})
	f.steps = []func(func(bool)) bool{
		func(released func(bool)) bool { released(false); <-hung; return true },
		func(func(bool)) bool { close(hung); return false }, // the watcher's hand-off
	}
	runReaders(t, &readers{max: 4, read: f.read})
	if f.calls != 2 {
		t.Errorf("%d reads, want 2", f.calls)
	}
}

// TestReadersFatalWhileBusy: a read that fails for good while another
// worker answers a packet ends every worker, and nothing reads again.
func TestReadersFatalWhileBusy(t *testing.T) {
	f := &fakeSocket{t: t}
	failed := make(chan struct{})
	f.steps = []func(func(bool)) bool{
		func(released func(bool)) bool { released(true); <-failed; return true },
		func(func(bool)) bool { close(failed); return false },
	}
	runReaders(t, &readers{max: 4, read: f.read})
	if f.calls != 2 {
		t.Errorf("%d reads, want 2", f.calls)
	}
}

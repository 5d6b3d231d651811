package dhcp

import (
	"sync"
	"time"
)

// watchPeriod is how often the watcher checks that the socket is being
// read. A packet that arrives while the reader answers another without
// having handed the socket over waits at most two periods, plus the time
// to wake a worker, to be read; with every worker busy, until the first
// is done. DHCP clients retransmit after seconds.
const watchPeriod = 5 * time.Millisecond

// watchIdle is how many quiet periods (no packet read) the watcher ticks
// through before it parks until the next packet. It doesn't park while
// the socket is left unread.
const watchIdle = 100

// readers runs the workers of one socket. One worker at a time reads the
// socket (the reader) and answers the packet it read in the same
// goroutine: no hand-off between goroutines, and so threads, from request
// to reply. It passes the reading on to another worker before answering
// only when more packets are queued already; if its answer then takes
// long (a slow store), a watcher passes it on. A wake-up per packet, for a
// worker that would find nothing to read, cost more than answering, and
// so did a timer per packet. Spare workers are kept, parked: a stack
// grown once by the store's deep calls serves the next packets. With
// every worker busy, the socket's receive buffer queues the packets;
// dropping them made clients retransmit a whole second later.
type readers struct {
	max int
	// read reads and serves one packet. Once it has the packet, before
	// answering it, it calls released exactly once, with whether more
	// packets are queued on the socket, and then returns true. If the
	// reading fails for good (the socket is done) it returns false
	// without calling released, and every worker ends.
	read func(released func(queued bool)) bool

	wg   sync.WaitGroup
	wake chan struct{} // a parked worker receives the reading
	kick chan struct{} // wakes the parked watcher
	stop chan struct{} // closed when a worker ended: the socket is done
	once sync.Once

	mu       sync.Mutex
	reading  bool   // a worker reads, or is woken or started to
	left     uint64 // packets read (each leaves the socket unread a while)
	watching bool   // the watcher ticks
	workers  int
}

// run serves until a worker's read reports the end, and every worker has
// returned.
func (r *readers) run() {
	r.wake = make(chan struct{})
	r.kick = make(chan struct{}, 1)
	r.stop = make(chan struct{})
	r.reading, r.workers, r.watching = true, 1, true
	r.wg.Go(r.watch)
	r.wg.Go(r.work)
	r.wg.Wait()
}

func (r *readers) work() {
	for {
		ok := r.read(r.release)
		if !ok {
			r.once.Do(func() { close(r.stop) })
			return
		}
		r.mu.Lock()
		if !r.reading { // nobody took over: read on
			r.reading = true
			r.mu.Unlock()
			continue
		}
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-r.stop:
			return
		}
	}
}

// release is called by the reader once it has read a packet.
func (r *readers) release(queued bool) {
	r.mu.Lock()
	r.reading = false
	r.left++
	kick := !r.watching
	r.watching = true
	r.mu.Unlock()
	if queued {
		r.handOff()
	}
	if kick {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// watch hands the socket over when it has been left unread for a whole
// period.
func (r *readers) watch() {
	t := time.NewTicker(watchPeriod)
	defer t.Stop()
	var seen uint64
	quiet := 0
	for {
		select {
		case <-t.C:
		case <-r.stop:
			return
		}
		r.mu.Lock()
		stuck := !r.reading && r.left == seen
		if r.left != seen {
			quiet = 0
		} else if quiet++; quiet >= watchIdle {
			r.watching = false
		}
		seen = r.left
		if stuck {
			quiet = 0 // don't park with the socket unread
			r.watching = true
		}
		parked := !r.watching
		r.mu.Unlock()
		if stuck {
			r.handOff()
		}
		if parked {
			t.Stop()
			select {
			case <-r.kick:
			case <-r.stop:
				return
			}
			t.Reset(watchPeriod)
		}
	}
}

// handOff gives the reading to a parked worker, or to a new one, unless a
// worker reads already or all are busy (then the first to finish reads).
func (r *readers) handOff() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reading {
		return
	}
	select {
	case <-r.stop: // the socket is done
		return
	default:
	}
	select {
	case r.wake <- struct{}{}:
		r.reading = true
	default:
		if r.workers < r.max {
			r.workers++
			r.reading = true
			r.wg.Go(r.work)
		}
	}
}

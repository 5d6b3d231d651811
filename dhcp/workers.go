package dhcp

import (
	"sync"
	"time"
)

// slowPacket is how long a packet may be handled before another worker
// takes over reading the socket: packets that arrive meanwhile wait at
// most this long (plus the time to wake a worker) to be read.
const slowPacket = 250 * time.Microsecond

// readers runs the workers of one socket. One worker at a time reads the
// socket (the reader) and answers the packet it read in the same
// goroutine: no hand-off between goroutines, and so threads, from request
// to reply. It passes the reading on to another worker before answering
// only when more packets are queued already, or once the packet has taken
// slowPacket: a wake-up per packet for a worker that would find nothing to
// read cost more than answering. Spare workers are kept, parked: a stack
// grown once by the store's deep calls serves the next packets. With
// every worker busy, the socket's receive buffer queues the packets;
// dropping them made clients retransmit a whole second later.
type readers struct {
	max int
	// read reads and serves one packet; false ends the worker. It calls
	// released once it no longer reads the socket, with whether more
	// packets are queued on it.
	read func(released func(queued bool)) bool

	wg      sync.WaitGroup
	wake    chan struct{} // a parked worker receives the reading
	stop    chan struct{} // closed when a worker ended: the socket is done
	once    sync.Once
	mu      sync.Mutex
	reading bool // a worker reads, or is woken or started to
	workers int
}

// run serves until a worker's read reports the end, and every worker has
// returned.
func (r *readers) run() {
	r.wake = make(chan struct{})
	r.stop = make(chan struct{})
	r.reading, r.workers = true, 1
	r.wg.Go(r.work)
	r.wg.Wait()
}

func (r *readers) work() {
	for {
		var timer *time.Timer
		ok := r.read(func(queued bool) {
			r.mu.Lock()
			r.reading = false
			r.mu.Unlock()
			if queued {
				r.handOff()
			} else {
				timer = time.AfterFunc(slowPacket, r.handOff)
			}
		})
		if timer != nil {
			timer.Stop()
		}
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

// handOff gives the reading to a parked worker, or to a new one, unless a
// worker reads already or all are busy (then the first to finish reads).
func (r *readers) handOff() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reading {
		return
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

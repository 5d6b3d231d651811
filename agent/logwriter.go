package agent

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
)

// logQueue is how many lines the log writer buffers.
const logQueue = 256

// dropWriter writes to w from its own goroutine and never blocks its
// callers: when w is stuck (journald writing to a root whose connection is
// down, a serial console at 115200 baud) lines queue, and once the queue is
// full they are dropped and counted. It is safe for concurrent use.
type dropWriter struct {
	w       io.Writer
	lines   chan []byte
	dropped atomic.Int64
	done    chan struct{}
}

// newDropWriter starts the writer's goroutine, which runs until ctx is
// done and the queue is written out (or Close).
func newDropWriter(ctx context.Context, w io.Writer) *dropWriter {
	d := &dropWriter{w: w, lines: make(chan []byte, logQueue), done: make(chan struct{})}
	go d.run(ctx)
	return d
}

func (d *dropWriter) run(ctx context.Context) {
	defer close(d.done)
	for {
		select {
		case p := <-d.lines:
			if n := d.dropped.Swap(0); n > 0 {
				fmt.Fprintf(d.w, "rackboot-agent: %d log lines dropped\n", n)
			}
			d.w.Write(p)
		case <-ctx.Done():
			for {
				select {
				case p := <-d.lines:
					d.w.Write(p)
				default:
					return
				}
			}
		}
	}
}

// Write queues a copy of p; it never fails.
func (d *dropWriter) Write(p []byte) (int, error) {
	select {
	case d.lines <- append([]byte(nil), p...):
	default:
		d.dropped.Add(1)
	}
	return len(p), nil
}

// wait waits for the goroutine to finish after ctx is done.
func (d *dropWriter) wait() { <-d.done }

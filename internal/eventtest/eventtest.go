// Package eventtest lets tests wait for things to happen instead of
// sleeping: fakes count what they see on a Counter, and a test waits for
// the nth occurrence, with a bound that only a failing test reaches. A
// LogCounter counts log messages, for decisions a program only logs.
package eventtest

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// Within bounds every Wait. It is a deadline for a failure, not a pace: a
// passing test never waits it out.
const Within = 10 * time.Second

// Counter counts occurrences of something. Its zero value is ready; it is
// safe for concurrent use.
type Counter struct {
	mu      sync.Mutex
	n       int
	waiters []waiter
}

type waiter struct {
	n    int
	done chan struct{}
}

// Add records an occurrence and returns how many there have been.
func (c *Counter) Add() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if w.n <= c.n {
			close(w.done)
		} else {
			keep = append(keep, w)
		}
	}
	clear(c.waiters[len(keep):])
	c.waiters = keep
	return c.n
}

// Count returns how many occurrences there have been.
func (c *Counter) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Reached returns a channel closed once there have been n occurrences.
func (c *Counter) Reached(n int) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	done := make(chan struct{})
	if c.n >= n {
		close(done)
	} else {
		c.waiters = append(c.waiters, waiter{n, done})
	}
	return done
}

// Wait returns once there have been n occurrences, and fails t (naming
// them what) if that takes longer than Within.
func (c *Counter) Wait(t testing.TB, n int, what string) {
	t.Helper()
	select {
	case <-c.Reached(n):
	case <-time.After(Within):
		t.Fatalf("%s: %d in %v; want %d", what, c.Count(), Within, n)
	}
}

// LogCounter is a slog.Handler that counts messages by their text and
// passes every record on to another handler.
type LogCounter struct {
	next slog.Handler
	mu   *sync.Mutex
	msgs map[string]*Counter
}

// NewLogCounter returns a LogCounter that passes records on to next.
func NewLogCounter(next slog.Handler) LogCounter {
	return LogCounter{next: next, mu: new(sync.Mutex), msgs: map[string]*Counter{}}
}

// Of returns the counter of msg.
func (l LogCounter) Of(msg string) *Counter {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.msgs[msg]
	if c == nil {
		c = new(Counter)
		l.msgs[msg] = c
	}
	return c
}

// Enabled implements slog.Handler: every level is counted.
func (l LogCounter) Enabled(context.Context, slog.Level) bool { return true }

// Handle implements slog.Handler.
func (l LogCounter) Handle(ctx context.Context, r slog.Record) error {
	l.Of(r.Message).Add()
	if !l.next.Enabled(ctx, r.Level) {
		return nil
	}
	return l.next.Handle(ctx, r)
}

// WithAttrs implements slog.Handler; the counts stay shared.
func (l LogCounter) WithAttrs(as []slog.Attr) slog.Handler {
	l.next = l.next.WithAttrs(as)
	return l
}

// WithGroup implements slog.Handler; the counts stay shared.
func (l LogCounter) WithGroup(name string) slog.Handler {
	l.next = l.next.WithGroup(name)
	return l
}

// Buffer collects what a program writes (its log, its console) for a test
// to read while the program goes on writing. Its zero value is ready; it
// is safe for concurrent use.
type Buffer struct {
	mu sync.Mutex
	b  []byte
}

// Write implements io.Writer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	return len(p), nil
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}

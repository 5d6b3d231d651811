package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// Newstyle handshake constants (NBD proto.md, "Newstyle negotiation").
const (
	greetingLen        = 18 // "NBDMAGIC" + "IHAVEOPT" + 16-bit handshake flags
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	optAbort           = 2
	greetingMagic      = "NBDMAGIC"
	greetingOptsMagic  = "IHAVEOPT"
	loopbackBufferSize = 1 << 20
)

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// greet connects to addr, reads the newstyle greeting, and then ends the
// negotiation politely (client flags and NBD_OPT_ABORT), as a client that
// went on would answer at once. Everything must happen before deadline.
func greet(ctx context.Context, addr string, deadline time.Time) error {
	d := net.Dialer{Deadline: deadline}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return fmt.Errorf("setting deadline: %w", err)
	}
	var g [greetingLen]byte
	if _, err := io.ReadFull(conn, g[:]); err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	if !bytes.Equal(g[:8], []byte(greetingMagic)) || !bytes.Equal(g[8:16], []byte(greetingOptsMagic)) {
		return fmt.Errorf("reading greeting: not a newstyle NBD greeting: %q", g[:16])
	}
	serverFlags := binary.BigEndian.Uint16(g[16:])
	msg := binary.BigEndian.AppendUint32(nil, uint32(serverFlags&(flagFixedNewstyle|flagNoZeroes)))
	msg = append(msg, greetingOptsMagic...)
	msg = binary.BigEndian.AppendUint32(msg, optAbort)
	msg = binary.BigEndian.AppendUint32(msg, 0)
	// Best effort: the greeting is what counts.
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = conn.Write(msg)
	return nil
}

// waitGreeting polls addr until it sends an NBD greeting, g dies, or the
// timeout passes.
func waitGreeting(ctx context.Context, addr string, g *group, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if err := greet(ctx, addr, time.Now().Add(time.Second)); err == nil {
			return nil
		} else {
			last = err
		}
		if !g.Alive() {
			return fmt.Errorf("server exited before serving%s", g.LogTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no NBD greeting from %s after %v: %w%s", addr, timeout, last, g.LogTail())
		}
		if err := benchkit.SleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// connectStorm opens n TCP connections to addr at once (all goroutines are
// released together) and returns how many received the NBD greeting within
// timeout of the release. When some did not, it also returns the first
// failure.
func connectStorm(ctx context.Context, addr string, n int, timeout time.Duration) (int, error) {
	release := make(chan struct{})
	var ready, ok atomic.Int64
	var wg sync.WaitGroup
	var deadline time.Time
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			ready.Add(1)
			<-release
			if err := greet(ctx, addr, deadline); err != nil {
				errs <- err
				return
			}
			ok.Add(1)
		})
	}
	for ready.Load() < int64(n) {
		time.Sleep(time.Millisecond)
	}
	deadline = time.Now().Add(timeout)
	close(release)
	wg.Wait()
	close(errs)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	got := int(ok.Load())
	if first, failed := <-errs; failed {
		return got, fmt.Errorf("%d of %d got no greeting, e.g. %w", n-got, n, first)
	}
	return got, nil
}

// loopbackBandwidth measures one TCP stream over 127.0.0.1 for about d and
// returns bytes per second as seen by the receiver.
func loopbackBandwidth(ctx context.Context, d time.Duration) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("listening: %w", err)
	}
	defer ln.Close()
	type result struct {
		n   int64
		dur time.Duration
		err error
	}
	got := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer conn.Close()
		buf := make([]byte, loopbackBufferSize)
		var n int64
		var start time.Time
		for {
			m, err := conn.Read(buf)
			if n == 0 && m > 0 {
				start = time.Now()
			}
			n += int64(m)
			if errors.Is(err, io.EOF) {
				got <- result{n: n, dur: time.Since(start)}
				return
			}
			if err != nil {
				got <- result{err: err}
				return
			}
		}
	}()
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return 0, fmt.Errorf("connecting: %w", err)
	}
	buf := make([]byte, loopbackBufferSize)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	end := time.Now().Add(d)
	for time.Now().Before(end) && ctx.Err() == nil {
		if _, err := conn.Write(buf); err != nil {
			conn.Close()
			return 0, fmt.Errorf("writing: %w", err)
		}
	}
	if err := conn.Close(); err != nil {
		return 0, fmt.Errorf("closing: %w", err)
	}
	r := <-got
	if r.err != nil {
		return 0, fmt.Errorf("reading: %w", r.err)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return float64(r.n) / r.dur.Seconds(), nil
}

// networkInfo describes the network the servers listen on: the
// interfaces of the network namespace (bench-nbd.sh gives the benchmark one
// of its own, with nothing but its loopback, so no other traffic shares it)
// and the TCP congestion control new connections get there. Both change
// what loopback TCP measures: on loopback the sender's pacing and the
// receiver's reads share the same CPUs, so a congestion control that paces
// (BBR) turns the client's wake-ups into part of the figure.
func networkInfo() string {
	ns := "a network namespace whose interfaces are unknown"
	if ifs, err := net.Interfaces(); err == nil {
		var names []string
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		if len(ifs) == 1 && ifs[0].Flags&net.FlagLoopback != 0 {
			ns = "a network namespace with no other interface"
		} else {
			ns = "a network namespace with interfaces " + strings.Join(names, ", ")
		}
	}
	cc := "unknown"
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control"); err == nil {
		cc = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("127.0.0.1 in %s; TCP congestion control %s", ns, cc)
}

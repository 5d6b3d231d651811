package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	tftpRRQ   = 1
	tftpDATA  = 3
	tftpERROR = 5
	tftpOACK  = 6
)

// batchTimeout bounds one batch of transfers.
const batchTimeout = 10 * time.Minute

// tftpProbe asks the server for fileName with blksize and tsize, and
// returns the block size it agreed to (512 if it answered without options).
// It then ends the transfer with an ERROR, as a client that only wanted
// the size would.
func tftpProbe(ctx context.Context, ns *netNS, blksize int) (int, error) {
	var conn *net.UDPConn
	err := ns.do(func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: clientIP.AsSlice()})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("opening a TFTP client socket: %w", err)
	}
	defer conn.Close()
	rrq := binary.BigEndian.AppendUint16(nil, tftpRRQ)
	for _, s := range []string{fileName, "octet", "blksize", strconv.Itoa(blksize), "tsize", "0"} {
		rrq = append(append(rrq, s...), 0)
	}
	server := &net.UDPAddr{IP: serverIP.AsSlice(), Port: tftpPort}
	if _, err := conn.WriteTo(rrq, server); err != nil {
		return 0, fmt.Errorf("sending RRQ: %w", err)
	}
	deadline := time.Now().Add(250 * time.Millisecond)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetReadDeadline(deadline)
	buf := make([]byte, 1<<16)
	n, from, err := conn.ReadFrom(buf)
	if err != nil {
		return 0, fmt.Errorf("waiting for the answer to RRQ: %w", err)
	}
	abort := binary.BigEndian.AppendUint16(nil, tftpERROR)
	abort = append(binary.BigEndian.AppendUint16(abort, 0), "probe done\x00"...)
	defer conn.WriteTo(abort, from)
	return parseRRQAnswer(buf[:n])
}

// parseRRQAnswer returns the block size agreed in the first packet a
// server sends in answer to a read request.
func parseRRQAnswer(b []byte) (int, error) {
	if len(b) < 2 {
		return 0, fmt.Errorf("short TFTP packet (%d bytes)", len(b))
	}
	switch op := binary.BigEndian.Uint16(b); op {
	case tftpDATA:
		return 512, nil
	case tftpERROR:
		msg := ""
		if len(b) > 4 {
			msg, _, _ = strings.Cut(string(b[4:]), "\x00")
		}
		return 0, fmt.Errorf("TFTP error: %q", msg)
	case tftpOACK:
		f := strings.Split(strings.TrimSuffix(string(b[2:]), "\x00"), "\x00")
		for i := 0; i+1 < len(f); i += 2 {
			if strings.EqualFold(f[i], "blksize") {
				n, err := strconv.Atoi(f[i+1])
				if err != nil {
					return 0, fmt.Errorf("OACK blksize %q", f[i+1])
				}
				return n, nil
			}
		}
		return 512, nil // options acknowledged, but not blksize
	default:
		return 0, fmt.Errorf("unexpected TFTP opcode %d", op)
	}
}

func tftpURL() string { return fmt.Sprintf("tftp://%s:%d/%s", serverIP, tftpPort, fileName) }
func httpURL() string { return fmt.Sprintf("http://%s:%d/%s", serverIP, httpPort, fileName) }

// curlTFTP returns the curl command that fetches the file over TFTP to
// out, and then prints writeOut (a curl --write-out format).
func curlTFTP(ctx context.Context, blksize int, out, writeOut string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "curl", "--silent", "--show-error", "--max-time", strconv.Itoa(int(batchTimeout.Seconds())),
		"--tftp-blksize", strconv.Itoa(blksize), "--write-out", writeOut, "--output", out, tftpURL())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// tftpBatch runs n curl clients together in ns, each fetching the file at
// blksize, and returns the wall time from the first start to the last
// exit. Every client must get exactly size bytes.
func tftpBatch(ctx context.Context, ns *netNS, n, blksize int, size int64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, batchTimeout)
	defer cancel()
	type proc struct {
		cmd         *exec.Cmd
		out, stderr bytes.Buffer
	}
	procs := make([]*proc, n)
	start := time.Now()
	var startErr error
	for i := range procs {
		p := &proc{cmd: curlTFTP(ctx, blksize, os.DevNull, "%{size_download}")}
		p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.stderr
		if err := ns.start(p.cmd); err != nil {
			startErr = err
			cancel()
			break
		}
		procs[i] = p
	}
	var errs []error
	for i, p := range procs {
		if p == nil {
			continue
		}
		err := p.cmd.Wait()
		got, _ := strconv.ParseInt(strings.TrimSpace(p.out.String()), 10, 64)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("client %d: curl: %w: %s", i, err, strings.TrimSpace(p.stderr.String())))
		case got != size:
			errs = append(errs, fmt.Errorf("client %d: got %d bytes of %d", i, got, size))
		}
	}
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if startErr != nil {
		return 0, startErr
	}
	if len(errs) > 0 {
		return 0, fmt.Errorf("%d of %d transfers failed, e.g. %w", len(errs), n, errs[0])
	}
	return elapsed, nil
}

// tftpSum fetches the file once over TFTP with curl and returns its SHA-256.
func tftpSum(ctx context.Context, ns *netNS, blksize int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, batchTimeout)
	defer cancel()
	h := sha256.New()
	var stderr bytes.Buffer
	cmd := curlTFTP(ctx, blksize, "-", "")
	cmd.Stdout, cmd.Stderr = h, &stderr
	if err := ns.start(cmd); err != nil {
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("curl: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// httpClient returns an HTTP client whose connections are made in ns, one
// per request, without compression.
func httpClient(ns *netNS) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := ns.do(func() error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	return &http.Client{Transport: &http.Transport{
		DialContext:        dial,
		DisableKeepAlives:  true,
		DisableCompression: true,
	}}
}

// httpGet fetches url, checks that the body has size bytes and feeds it to
// h if h is not nil.
func httpGet(ctx context.Context, c *http.Client, url string, size int64, h hash.Hash) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	buf := make([]byte, 256<<10)
	var got int64
	for {
		n, err := resp.Body.Read(buf)
		got += int64(n)
		if h != nil {
			h.Write(buf[:n])
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the body after %d bytes: %w", got, err)
		}
	}
	if got != size {
		return fmt.Errorf("GET %s: got %d bytes of %d", url, got, size)
	}
	return nil
}

// httpBatch runs n HTTP clients together in ns and returns the wall time
// from the first request to the last byte of the last response.
func httpBatch(ctx context.Context, ns *netNS, n int, size int64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, batchTimeout)
	defer cancel()
	c := httpClient(ns)
	defer c.CloseIdleConnections()
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() { errs[i] = httpGet(ctx, c, httpURL(), size, nil) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		return 0, fmt.Errorf("%d of %d transfers failed, e.g. %w", len(failed), n, failed[0])
	}
	return elapsed, nil
}

// httpSum fetches the file once over HTTP and returns its SHA-256.
func httpSum(ctx context.Context, ns *netNS, size int64) (string, error) {
	h := sha256.New()
	if err := httpGet(ctx, httpClient(ns), httpURL(), size, h); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// httpReady checks that the server answers a HEAD of the file with 200.
func httpReady(ctx context.Context, ns *netNS) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, httpURL(), nil)
	if err != nil {
		return err
	}
	resp, err := httpClient(ns).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HEAD %s: %s", httpURL(), resp.Status)
	}
	return nil
}

// Package web is rackboot's HTTP face: boot files and generated scripts
// for firmware that speaks HTTP (iPXE, lpxelinux), and the API the board
// initramfs and agent report to.
//
// # Boot files
//
// GET and HEAD of any path serve the lab's boot file for the requesting
// address (Range requests included): the static boot tree, and the
// generated per-board files (pxelinux.cfg/..., ipxe/boot.ipxe,
// boot.scr.uimg). Each request is logged with the board's name and counted
// in its boot timeline.
//
// # Reports
//
// POST /api/v1/report with "Authorization: Bearer TOKEN" and a JSON
// lab.Step records a boot step. The token must be the current boot of the
// board at the request's source address.
package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/rackboot/rackboot/lab"
)

// Defaults for Server's zero fields.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultShutdownTimeout   = 10 * time.Second
)

// Server serves HTTP for the lab. The zero value with Lab set works.
type Server struct {
	Lab    *lab.Lab
	Logger *slog.Logger
	// ShutdownTimeout bounds the wait for in-flight requests once Serve's
	// context is done.
	ShutdownTimeout time.Duration
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/report", s.report)
	mux.HandleFunc("GET /", s.file)
	return mux
}

// ListenAndServe listens on addr and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for HTTP: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done, then shuts down gracefully within
// ShutdownTimeout.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(s.logger().Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving HTTP: %w", err)
	case <-ctx.Done():
	}
	timeout := s.ShutdownTimeout
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("shutting down HTTP: %w", err)
	}
	return nil
}

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// countingWriter counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (s *Server) file(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	peer := remoteAddr(r)
	path := strings.TrimPrefix(r.URL.Path, "/")
	log := s.logger().With("peer", peer.String(), "file", path)
	if b, ok := s.Lab.BoardAt(peer); ok {
		log = log.With("board", b)
	}
	f, err := s.Lab.OpenFile(r.Context(), path, peer)
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, fs.ErrNotExist):
			code = http.StatusNotFound
		case errors.Is(err, fs.ErrPermission):
			code = http.StatusForbidden
		}
		if code == http.StatusInternalServerError {
			log.Error("opening boot file", "err", err)
		} else {
			log.Info("boot file refused", "err", err)
		}
		http.Error(w, http.StatusText(code), code)
		return
	}
	defer f.Close()
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, path, f.ModTime, f.ReadSeeker)
	dur := time.Since(start)
	log.Info("http", "method", r.Method, "bytes", cw.n, "dur", dur)
	if r.Method == http.MethodGet {
		s.Lab.Transfer(r.Context(), "http", path, peer, cw.n, dur, nil)
	}
}

func (s *Server) report(w http.ResponseWriter, r *http.Request) {
	peer := remoteAddr(r)
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		http.Error(w, "missing bearer token", http.StatusUnauthorized)
		return
	}
	var step lab.Step
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&step); err != nil || step.Name == "" {
		http.Error(w, fmt.Sprintf("bad report: %v", err), http.StatusBadRequest)
		return
	}
	if err := s.Lab.Report(r.Context(), token, peer, step); err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, lab.ErrBadToken):
			code = http.StatusForbidden
		case errors.Is(err, fs.ErrInvalid):
			code = http.StatusBadRequest
		}
		s.logger().Warn("report refused", "peer", peer.String(), "err", err)
		http.Error(w, http.StatusText(code), code)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

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
// # API
//
// GET /api/v1/boots lists the newest boots (?limit=N, default 50) with
// their timelines: config fetched, files served, NBD attach, reported
// steps. GET /api/v1/unknown lists machines waiting for enrollment. Boot
// tokens are never shown.
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
	mux.HandleFunc("GET /api/v1/boots", s.boots)
	mux.HandleFunc("GET /api/v1/unknown", s.unknown)
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

// ReadFrom passes through to the ResponseWriter's, which sends a file with
// sendfile(2); hiding it made every download a 32 KiB read/write loop.
func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		w.n += n
		return n, err
	}
	n, err := io.Copy(struct{ io.Writer }{w}, r)
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
	if r.Method == http.MethodGet {
		// TCP's handshake proved the peer's address: a boot config
		// starts its boot now, before the client reads its token.
		// Not cancelled by a client that goes away: once the boot is
		// recorded, its first events must be too.
		if err := f.Delivered(context.WithoutCancel(r.Context())); err != nil {
			log.Error("starting boot", "err", err)
			http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
			return
		}
	}
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

// BootView is a boot as the API shows it: no token.
type BootView struct {
	ID       int64       `json:"id"`
	Board    string      `json:"board"`
	IP       string      `json:"ip"`
	MAC      string      `json:"mac"`
	Image    string      `json:"image"`
	Identify bool        `json:"identify,omitempty"`
	Started  time.Time   `json:"started"`
	Ended    *time.Time  `json:"ended,omitempty"`
	Events   []EventView `json:"events"`
}

// EventView is one timeline entry.
type EventView struct {
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Name     string    `json:"name"`
	Status   string    `json:"status"`
	Bytes    int64     `json:"bytes,omitempty"`
	Duration int64     `json:"duration_ns,omitempty"`
	Error    string    `json:"error,omitempty"`
	// Detail is the JSON a report carried.
	Detail json.RawMessage `json:"detail,omitempty"`
}

func (s *Server) boots(w http.ResponseWriter, r *http.Request) {
	limit := 50
	if v := r.URL.Query().Get("limit"); v != "" {
		if _, err := fmt.Sscan(v, &limit); err != nil || limit < 1 || limit > 1000 {
			http.Error(w, "limit: want 1 to 1000", http.StatusBadRequest)
			return
		}
	}
	store := s.Lab.Store()
	boots, err := store.Boots(r.Context(), limit)
	if err != nil {
		s.logger().Error("listing boots", "err", err)
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	out := []BootView{}
	for _, b := range boots {
		v := BootView{ID: b.ID, Board: b.Board, IP: b.IP.String(), MAC: b.MAC.String(), Image: b.Image,
			Identify: b.Identify, Started: b.Started, Events: []EventView{}}
		if !b.Ended.IsZero() {
			v.Ended = &b.Ended
		}
		events, err := store.Events(r.Context(), b.ID)
		if err != nil {
			s.logger().Error("listing boot events", "err", err)
			http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
			return
		}
		for _, e := range events {
			v.Events = append(v.Events, EventView{Time: e.Time, Kind: e.Kind, Name: e.Name, Status: e.Status,
				Bytes: e.Bytes, Duration: int64(e.Duration), Error: e.Error})
			if json.Valid([]byte(e.Detail)) {
				v.Events[len(v.Events)-1].Detail = json.RawMessage(e.Detail)
			}
		}
		out = append(out, v)
	}
	writeJSON(w, out)
}

func (s *Server) unknown(w http.ResponseWriter, r *http.Request) {
	list, err := s.Lab.Unknown(r.Context())
	if err != nil {
		s.logger().Error("listing unknown machines", "err", err)
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	type view struct {
		MAC         string    `json:"mac"`
		Firmware    string    `json:"firmware"`
		Arch        string    `json:"arch"`
		VendorClass string    `json:"vendor_class"`
		FirstSeen   time.Time `json:"first_seen"`
		LastSeen    time.Time `json:"last_seen"`
		Count       int       `json:"count"`
	}
	out := []view{}
	for _, u := range list {
		out = append(out, view{u.MAC.String(), u.Firmware, u.Arch, u.VendorClass, u.FirstSeen, u.LastSeen, u.Count})
	}
	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

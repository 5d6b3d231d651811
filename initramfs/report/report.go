package report

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults for Reporter's zero fields.
const (
	DefaultTimeout     = 2 * time.Second
	DefaultBudget      = 10 * time.Second
	DefaultMaxFailures = 2
	// maxError is the longest error text the appliance accepts.
	maxError = 4096
)

// Statuses of a step.
const (
	StatusOK     = "ok"
	StatusFailed = "failed"
)

// Step is one report, as the appliance's API takes it.
type Step struct {
	Name     string        `json:"step"`
	Status   string        `json:"status"`
	Duration time.Duration `json:"duration_ns"`
	Error    string        `json:"error,omitempty"`
	// Detail is JSON the appliance stores with the step (identify mode's
	// machine description), at most MaxDetail bytes.
	Detail json.RawMessage `json:"detail,omitempty"`
}

// MaxDetail bounds Step.Detail, as the appliance does.
const MaxDetail = 16 << 10

// Reporter prints and reports steps. Set the fields before the first call;
// its methods are safe for concurrent use.
type Reporter struct {
	// URL is the report endpoint and Token the boot's bearer token. Steps
	// recorded before they are set are queued; with either still empty
	// when the network is up, steps are only printed. Set them before
	// Online.
	URL, Token string
	// Console receives one line per step.
	Console io.Writer
	// Dial connects to the appliance; nil means a net.Dialer. Reports are
	// plain HTTP/1.1 written by hand: net/http would bring crypto/tls and
	// about a megabyte into the initramfs.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds each report; zero means DefaultTimeout.
	Timeout time.Duration
	// Budget bounds the total time spent sending; zero means DefaultBudget.
	Budget time.Duration
	// Uptime is the clock printed with each step: time since the kernel
	// started. Nil prints no time.
	Uptime func() time.Duration

	once    sync.Once
	cmu     sync.Mutex // serialises Console writes
	mu      sync.Mutex
	queue   []Step
	online  bool
	dead    bool
	spent   time.Duration
	fails   int
	sending bool
	idle    chan struct{} // closed and replaced whenever the queue drains
}

func (r *Reporter) init() {
	r.once.Do(func() {
		r.idle = make(chan struct{})
	})
}

// Run runs f as step name, timing it, and records the result.
func (r *Reporter) Run(ctx context.Context, name string, f func(context.Context) error) error {
	start := time.Now()
	err := f(ctx)
	r.Record(name, time.Since(start), err)
	return err
}

// Record prints and queues a finished step.
func (r *Reporter) Record(name string, dur time.Duration, err error) {
	s := Step{Name: name, Status: StatusOK, Duration: dur}
	if err != nil {
		s.Status = StatusFailed
		s.Error = err.Error()
		if len(s.Error) > maxError {
			s.Error = s.Error[:maxError]
		}
	}
	r.print(s)
	r.enqueue(s)
}

// RecordDetail queues a successful step carrying detail, a JSON value
// (identify mode's machine description); detail over MaxDetail is
// dropped.
func (r *Reporter) RecordDetail(name string, dur time.Duration, detail []byte) {
	s := Step{Name: name, Status: StatusOK, Duration: dur}
	if len(detail) <= MaxDetail && json.Valid(detail) {
		s.Detail = detail
	}
	r.print(Step{Name: name, Status: StatusOK, Duration: dur})
	r.enqueue(s)
}

// Printf prints a line on the console, prefixed like the step lines.
func (r *Reporter) Printf(format string, args ...any) {
	if r.Console == nil {
		return
	}
	r.write(fmt.Sprintf("rackboot: %s%s\n", r.at(), fmt.Sprintf(format, args...)))
}

// write writes one line to the console.
func (r *Reporter) write(line string) {
	r.cmu.Lock()
	defer r.cmu.Unlock()
	io.WriteString(r.Console, line)
}

func (r *Reporter) at() string {
	if r.Uptime == nil {
		return ""
	}
	return fmt.Sprintf("[%.3f] ", r.Uptime().Seconds())
}

func (r *Reporter) print(s Step) {
	if r.Console == nil {
		return
	}
	line := fmt.Sprintf("rackboot: %sstep=%s status=%s dur=%s", r.at(), s.Name, s.Status, s.Duration.Round(time.Millisecond))
	if s.Error != "" {
		line += " err=" + s.Error
	}
	r.write(line + "\n")
}

func (r *Reporter) enqueue(s Step) {
	r.init()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead {
		// Failures wait for Retry, a few of them: the cause of a
		// failed boot is what the appliance most needs to hear.
		if s.Status == StatusFailed && len(r.queue) < maxHeldFailures {
			r.queue = append(r.queue, s)
		}
		return
	}
	r.queue = append(r.queue, s)
	r.kick()
}

// maxHeldFailures bounds the failed steps kept after reporting stopped.
const maxHeldFailures = 8

// Retry lets a reporter that stopped (see Online) try again, with a
// fresh budget, and sends the failed steps it kept meanwhile: the
// appliance may have been restarting while the boot failed. Call it
// before the last Flush of a failed boot.
func (r *Reporter) Retry() {
	r.init()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.dead {
		return
	}
	r.dead, r.fails, r.spent = false, 0, 0
	r.kick()
}

// kick starts the sender if there is work and the network is up; r.mu held.
func (r *Reporter) kick() {
	if !r.online || r.sending || len(r.queue) == 0 || r.URL == "" || r.Token == "" {
		return
	}
	r.sending = true
	go r.send()
}

// Online says the network is up: queued and future steps are sent.
func (r *Reporter) Online() {
	r.init()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.online = true
	r.kick()
}

func (r *Reporter) send() {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	budget := r.Budget
	if budget <= 0 {
		budget = DefaultBudget
	}
	for {
		r.mu.Lock()
		if len(r.queue) == 0 || r.dead {
			// Stopped: keep the failures for Retry (see enqueue).
			held := r.queue[:0]
			for _, s := range r.queue {
				if s.Status == StatusFailed && len(held) < maxHeldFailures {
					held = append(held, s)
				}
			}
			r.queue = held
			r.sending = false
			close(r.idle)
			r.idle = make(chan struct{})
			r.mu.Unlock()
			return
		}
		s := r.queue[0]
		r.queue = r.queue[1:]
		t := min(timeout, budget-r.spent)
		r.mu.Unlock()

		start := time.Now()
		err := r.post(s, t)
		took := time.Since(start)

		r.mu.Lock()
		r.spent += took
		if err != nil {
			r.fails++
			if r.Console != nil {
				r.write(fmt.Sprintf("rackboot: %sreport %s: %v\n", r.at(), s.Name, err))
			}
		} else {
			r.fails = 0
		}
		if r.fails >= DefaultMaxFailures || r.spent >= budget {
			if !r.dead && r.Console != nil {
				r.write(fmt.Sprintf("rackboot: %sappliance unreachable: reporting stopped, steps go to the console only\n", r.at()))
			}
			r.dead = true
		}
		r.mu.Unlock()
	}
}

func (r *Reporter) post(s Step, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := Client{URL: r.URL, Token: r.Token, Dial: r.Dial, UserAgent: "rackboot-initramfs"}
	return c.Post(ctx, s)
}

// ErrRefused is returned (wrapped) by Client.Post when the appliance
// answers 401 or 403: the token is not the board's current boot (the board
// was booted again, or the boot was ended), so retrying won't help.
var ErrRefused = errors.New("report refused")

// Client posts steps to the appliance. Its zero value is not usable: URL
// and Token are required. It is safe for concurrent use.
type Client struct {
	// URL is the report endpoint (http:// only) and Token the boot's
	// bearer token.
	URL, Token string
	// Dial connects to the appliance; nil means a net.Dialer. Reports are
	// plain HTTP/1.1 written by hand: net/http would bring crypto/tls and
	// about a megabyte into the initramfs.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// UserAgent names the sender.
	UserAgent string
}

// Post sends one step and waits for the answer, within ctx. The URL's
// host should be an IP address: a name is resolved at every call, reading
// /etc/resolv.conf and friends.
func (c *Client) Post(ctx context.Context, s Step) error {
	body, err := json.Marshal(s)
	if err != nil {
		return err
	}
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme != "http" {
		return fmt.Errorf("report URL %q: want http://", c.URL)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	dial := c.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	conn, err := dial(ctx, "tcp", host)
	if err != nil {
		return err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var req strings.Builder
	fmt.Fprintf(&req, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n", u.RequestURI(), u.Host, c.Token)
	fmt.Fprintf(&req, "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\nUser-Agent: %s\r\n\r\n", len(body), c.UserAgent)
	req.Write(body)
	if _, err := io.WriteString(conn, req.String()); err != nil {
		return err
	}
	line, err := textproto.NewReader(bufio.NewReader(io.LimitReader(conn, 4096))).ReadLine()
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	// HTTP/1.1 204 No Content
	_, rest, _ := strings.Cut(line, " ")
	code, err := strconv.Atoi(strings.SplitN(rest, " ", 2)[0])
	if err != nil {
		return errors.New("malformed HTTP answer")
	}
	switch {
	case code == 401 || code == 403:
		return fmt.Errorf("appliance answered %s: %w", rest, ErrRefused)
	case code/100 != 2:
		return fmt.Errorf("appliance answered %s", rest)
	}
	return nil
}

// Flush waits until every queued step is sent (or given up), or ctx is
// done. Without network it returns at once.
func (r *Reporter) Flush(ctx context.Context) {
	r.init()
	r.mu.Lock()
	if !r.sending {
		r.mu.Unlock()
		return
	}
	idle := r.idle
	r.mu.Unlock()
	select {
	case <-idle:
	case <-ctx.Done():
	}
}

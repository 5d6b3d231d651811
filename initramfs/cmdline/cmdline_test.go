package cmdline

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const base = `console=ttyS0,115200 rackboot.server=10.0.0.1 rackboot.http=http://10.0.0.1:8080/ rackboot.board=b1 rackboot.token=tok rackboot.nbd=nbd://10.0.0.1:10809/tok`

func TestParse(t *testing.T) {
	t.Parallel()
	mac, _ := net.ParseMAC("52:54:00:7b:00:01")
	want := func(f func(*Config)) Config {
		c := Config{
			Mode: ModeBoot, Server: "10.0.0.1", HTTP: "http://10.0.0.1:8080/", Board: "b1", Token: "tok",
			NBDAddr: "10.0.0.1:10809", NBDExport: "tok", Init: DefaultInit, FailDelay: DefaultFailDelay,
		}
		if f != nil {
			f(&c)
		}
		return c
	}
	tests := map[string]struct {
		line        string
		want        Config
		missing     []string
		invalid     int
		errExpected bool
	}{
		"full": {
			line: base + " rackboot.disk=/dev/vdb BOOTIF=01-52-54-00-7b-00-01 rackboot.fail_delay=5 rackboot.debug=shell quiet",
			want: want(func(c *Config) { c.Disk = "/dev/vdb"; c.BootIF = mac; c.FailDelay = 5 * time.Second; c.Shell = true }),
		},
		"disk none, duration, modules, quoted": {
			line: base + ` rackboot.disk=none rackboot.fail_delay=1m "rackboot.modules=igb,r8169" rackboot.init="/lib/systemd/systemd"`,
			want: want(func(c *Config) {
				c.FailDelay = time.Minute
				c.Modules = []string{"igb", "r8169"}
				c.Init = "/lib/systemd/systemd"
			}),
		},
		"the last disk wins, none included": {
			line: base + " rackboot.disk=largest rackboot.disk=none",
			want: want(nil),
		},
		"a later disk overrides none": {
			line: base + " rackboot.disk=none rackboot.disk=serial:X1",
			want: want(func(c *Config) { c.Disk = "serial:X1" }),
		},
		"delays beyond a day": {
			line:        base + " rackboot.fail_delay=9300000000",
			want:        want(nil),
			invalid:     1,
			errExpected: true,
		},
		"default NBD port, http without slash": {
			line: "rackboot.server=s rackboot.http=http://s:80 rackboot.board=b rackboot.token=t rackboot.nbd=nbd://s/t",
			want: Config{Mode: ModeBoot, Server: "s", HTTP: "http://s:80/", Board: "b", Token: "t", NBDAddr: "s:10809", NBDExport: "t", Init: DefaultInit, FailDelay: DefaultFailDelay},
		},
		"unknown rackboot parameters are collected": {
			line: base + " rackboot.colour=red rackboot.aaa=1 other.param=1",
			want: want(func(c *Config) { c.Unknown = []string{"rackboot.aaa", "rackboot.colour"} }),
		},
		"identify needs no board or nbd": {
			line: "rackboot.server=s rackboot.http=http://s/ rackboot.token=t rackboot.mode=identify",
			want: Config{Mode: ModeIdentify, Server: "s", HTTP: "http://s/", Token: "t", Init: DefaultInit, FailDelay: DefaultFailDelay},
		},
		"missing": {
			line:        "console=ttyS0 rackboot.server=s rackboot.http=http://s/",
			want:        Config{Mode: ModeBoot, Server: "s", HTTP: "http://s/", Init: DefaultInit, FailDelay: DefaultFailDelay},
			missing:     []string{"rackboot.token", "rackboot.board", "rackboot.nbd"},
			errExpected: true,
		},
		"invalid": {
			line:        base + " rackboot.mode=party BOOTIF=xx rackboot.fail_delay=soon rackboot.debug=gdb rackboot.init=sbin/init",
			want:        want(nil),
			invalid:     5,
			errExpected: true,
		},
		"empty value is missing": {
			line:        "rackboot.server=s rackboot.http=http://s/ rackboot.board= rackboot.token=t rackboot.nbd=nbd://s/t",
			want:        Config{Mode: ModeBoot, Server: "s", HTTP: "http://s/", Token: "t", NBDAddr: "s:10809", NBDExport: "t", Init: DefaultInit, FailDelay: DefaultFailDelay},
			missing:     []string{"rackboot.board"},
			errExpected: true,
		},
		"invalid nbd counts as given": {
			line:        "rackboot.server=s rackboot.http=http://s/ rackboot.board=b rackboot.token=t rackboot.nbd=http://x/",
			want:        Config{Mode: ModeBoot, Server: "s", HTTP: "http://s/", Board: "b", Token: "t", Init: DefaultInit, FailDelay: DefaultFailDelay},
			invalid:     1,
			errExpected: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Parse(tc.line)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Parse(%q) config (-want +got):\n%s", tc.line, diff)
			}
			if (err != nil) != tc.errExpected {
				t.Fatalf("Parse(%q) error = %v; want error: %v", tc.line, err, tc.errExpected)
			}
			if err == nil {
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse(%q) error %T; want *Error", tc.line, err)
			}
			if diff := cmp.Diff(tc.missing, e.Missing); diff != "" {
				t.Errorf("missing (-want +got):\n%s", diff)
			}
			if len(e.Invalid) != tc.invalid {
				t.Errorf("invalid = %q; want %d entries", e.Invalid, tc.invalid)
			}
		})
	}
}

func TestReportURL(t *testing.T) {
	c := Config{HTTP: "http://10.0.0.1:8080/"}
	if got, want := c.ReportURL(), "http://10.0.0.1:8080/api/v1/report"; got != want {
		t.Errorf("ReportURL() = %q; want %q", got, want)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(base + " BOOTIF=01-52-54-00-7b-00-01 rackboot.disk=none")
	f.Add(`a="b c" rackboot.modules=,, rackboot.fail_delay=-1`)
	f.Fuzz(func(t *testing.T, line string) {
		if len(line) > 4096 {
			return
		}
		c, err := Parse(line)
		if err == nil && c.Mode == ModeBoot && (c.Board == "" || c.NBDExport == "" || c.Token == "") {
			t.Errorf("Parse(%q) = %+v, nil; want board, token and export", line, c)
		}
	})
}

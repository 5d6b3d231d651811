package boot

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rackboot/rackboot/initramfs/cmdline"
	"github.com/rackboot/rackboot/initramfs/identity"
	"github.com/rackboot/rackboot/initramfs/machine"
	"github.com/rackboot/rackboot/initramfs/nbdroot"
	"github.com/rackboot/rackboot/initramfs/netup"
)

type diskFunc func(ctx context.Context, selector string, exclude []string) (string, error)

func (f diskFunc) Build(ctx context.Context, selector string, exclude []string) (string, error) {
	return f(ctx, selector, exclude)
}

const line = "rackboot.server=10.0.0.1 rackboot.board=b1 rackboot.token=t rackboot.nbd=nbd://10.0.0.1/t rackboot.disk=largest rackboot.fail_delay=7"

// fake records what the sequence did. Reports go nowhere (no HTTP URL
// reaches a server), so this checks order and failure handling.
func fake(cmd string) (*System, *[]string, *bytes.Buffer) {
	var did []string
	var console bytes.Buffer
	var mu sync.Mutex // modules load concurrently with the network step
	log := func(s string) { mu.Lock(); did = append(did, s); mu.Unlock() }
	mac, _ := net.ParseMAC("52:54:00:00:00:01")
	sys := &System{
		Early:       func() error { log("early"); return nil },
		Cmdline:     func() (string, error) { return cmd, nil },
		LoadModules: func(extra, required []string) error { log("modules " + strings.Join(required, ",")); return nil },
		Network: func(ctx context.Context, c cmdline.Config, _ func(string, ...any)) (netup.Lease, error) {
			log("network")
			return netup.Lease{Interface: "eth0", MAC: mac, Addr: netip.MustParsePrefix("10.0.0.5/24")}, nil
		},
		AttachRoot: func(ctx context.Context, o nbdroot.Options) (nbdroot.Root, error) {
			log("attach " + o.Addr + " " + o.Export + " " + o.Target)
			return nbdroot.Root{Device: "/dev/nbd0"}, nil
		},
		Disk: diskFunc(func(ctx context.Context, sel string, ex []string) (string, error) {
			log("disk " + sel + " " + strings.Join(ex, ","))
			return "/dev/vda1", nil
		}),
		Mount:         func(dev, target string) error { log("mount " + dev + " " + target); return nil },
		WriteIdentity: func(root string, id identity.Identity) error { log("identity " + id.Board + " " + id.MAC); return nil },
		Describe:      func() machine.Facts { return machine.Facts{CPUs: 2} },
		SwitchRoot: func(root, init string) error {
			log("switch_root " + root + " " + init)
			return errors.New("exec failed")
		},
		Reboot:   func() error { log("reboot"); return nil },
		PowerOff: func() error { log("poweroff"); return nil },
		Shell:    func() error { log("shell"); return nil },
		Sleep:    func(ctx context.Context, d time.Duration) { log("sleep " + d.String()) },
		Uptime:   func() time.Duration { return time.Second },
		Console:  &console,
	}
	return sys, &did, &console
}

func TestRun(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		line string
		edit func(*System)
		want string
	}{
		"boot (switch_root fails in the fake)": {
			line: line + " rackboot.http=http://127.0.0.1:1/",
			want: "early|modules nbd,ext4|network|attach 10.0.0.1:10809 t /newroot|disk largest nbd0|mount /dev/vda1 /newroot/build|identity b1 52:54:00:00:00:01|switch_root /newroot /sbin/init|sleep 7s|reboot",
		},
		"no build disk": {
			line: strings.Replace(line, "rackboot.disk=largest", "rackboot.disk=none", 1) + " rackboot.http=http://127.0.0.1:1/",
			want: "early|modules nbd,ext4|network|attach 10.0.0.1:10809 t /newroot|identity b1 52:54:00:00:00:01|switch_root /newroot /sbin/init|sleep 7s|reboot",
		},
		"missing disk fails unless optional": {
			line: line + " rackboot.http=http://127.0.0.1:1/",
			edit: func(s *System) {
				s.Disk = diskFunc(func(context.Context, string, []string) (string, error) { return "", ErrNoDisk })
			},
			want: "early|modules nbd,ext4|network|attach 10.0.0.1:10809 t /newroot|sleep 7s|reboot",
		},
		"command line without http: console only, at once": {
			line: line,
			want: "early|sleep 7s|reboot",
		},
		"missing board: held until the network is up": {
			line: strings.Replace(line, "rackboot.board=b1", "", 1) + " rackboot.http=http://127.0.0.1:1/ rackboot.debug=shell",
			want: "early|modules nbd,ext4|network|shell|reboot",
		},
		"identify": {
			line: "rackboot.server=s rackboot.http=http://127.0.0.1:1/ rackboot.token=t rackboot.mode=identify",
			want: "early|modules |network|poweroff",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sys, did, console := fake(tc.line)
			if tc.edit != nil {
				tc.edit(sys)
			}
			Run(t.Context(), *sys)
			if got := strings.Join(inOrder(*did), "|"); got != tc.want {
				t.Errorf("Run did\n%s\nwant\n%s\nconsole:\n%s", got, tc.want, console)
			}
		})
	}
}

// inOrder puts "modules" before "network": the two steps run at the same
// time, so the fakes log them in either order.
func inOrder(did []string) []string {
	out := append([]string(nil), did...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "network" && strings.HasPrefix(out[i+1], "modules") {
			out[i], out[i+1] = out[i+1], out[i]
		}
	}
	return out
}

// The network comes up while the modules load: a LoadModules that only
// returns once the network step has started doesn't hold the boot up.
func TestModulesLoadDuringNetwork(t *testing.T) {
	t.Parallel()
	sys, did, console := fake(line + " rackboot.http=http://127.0.0.1:1/")
	networkStarted := make(chan struct{})
	network := sys.Network
	sys.Network = func(ctx context.Context, c cmdline.Config, p func(string, ...any)) (netup.Lease, error) {
		close(networkStarted)
		return network(ctx, c, p)
	}
	sys.LoadModules = func(extra, required []string) error {
		select {
		case <-networkStarted:
		case <-time.After(5 * time.Second):
			return errors.New("the network step never started while modules loaded")
		}
		return nil
	}
	Run(t.Context(), *sys)
	if !strings.Contains(strings.Join(*did, "|"), "attach") {
		t.Errorf("Run did %q; want the root attached\nconsole:\n%s", *did, console)
	}
}

package rootfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rackboot/rackboot/internal/testenv"
)

// agentUnit is a unit like agent/rackboot-agent.service.
const agentUnit = `[Unit]
Description=test agent
[Service]
ExecStart=@/usr/sbin/rackboot-agent @rackboot-agent
[Install]
WantedBy=sysinit.target
`

const keygenUnit = `[Service]
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
RequiredBy=ssh.service
`

// goodTree writes a tree that passes Inspect with Expect{Hostname:
// "placeholder", Agent: true}.
func goodTree(t *testing.T) string {
	t.Helper()
	tree := t.TempDir()
	files := map[string]string{
		"etc/machine-id":                                      "",
		"etc/hostname":                                        "placeholder\n",
		"etc/ssh/sshd_config":                                 "# config\n",
		"etc/network/interfaces":                              "auto lo\niface lo inet loopback\n",
		"usr/sbin/rackboot-agent":                             "\x7fELF agent",
		"usr/sbin/sshd":                                       "\x7fELF sshd",
		"usr/bin/ssh-keygen":                                  "\x7fELF ssh-keygen",
		"usr/lib/systemd/system/ssh.service":                  "[Service]\nExecStart=/usr/sbin/sshd -D\n",
		"usr/lib/systemd/system/systemd-firstboot.service":    "[Service]\nExecStart=systemd-firstboot --prompt\n",
		"usr/local/lib/systemd/system/rackboot-agent.service": agentUnit,
		"etc/systemd/system/rackboot-ssh-keygen.service":      keygenUnit,
	}
	for p, data := range files {
		mode := os.FileMode(0o644)
		if strings.Contains(p, "bin/") {
			mode = 0o755
		}
		writeTestFile(t, filepath.Join(tree, p), data, mode)
	}
	for _, d := range []string{"build", "var/log/journal", "var/log/apt", "var/lib/dhcp", "var/lib/dbus", "lib"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"etc/systemd/system/sysinit.target.wants/rackboot-agent.service":         "/usr/local/lib/systemd/system/rackboot-agent.service",
		"etc/systemd/system/ssh.service.requires/rackboot-ssh-keygen.service":    "/etc/systemd/system/rackboot-ssh-keygen.service",
		"etc/systemd/system/multi-user.target.wants/rackboot-ssh-keygen.service": "/etc/systemd/system/rackboot-ssh-keygen.service",
		"etc/systemd/system/systemd-firstboot.service":                           "/dev/null",
		"var/log/README": "../../usr/share/doc/systemd/README.logs",
	}
	for p, target := range links {
		os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755)
		if err := os.Symlink(target, filepath.Join(tree, p)); err != nil {
			t.Fatal(err)
		}
	}
	// The log symlink above is one of the mutations; the good tree has
	// none.
	os.Remove(filepath.Join(tree, "var/log/README"))
	return tree
}

func writeTestFile(t *testing.T, p, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func mkfsTest(t *testing.T, tree string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "root.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

func TestInspect(t *testing.T) {
	t.Parallel()
	testenv.LookPath(t, "mkfs.ext4")
	testenv.LookPath(t, "debugfs")
	want := Expect{Hostname: "placeholder", Agent: true}
	tests := map[string]struct {
		mutate func(t *testing.T, tree string)
		want   Expect
		// errs are substrings the error must have; none means no error.
		errs []string
	}{
		"good": {mutate: func(*testing.T, string) {}},
		"good without agent": {
			mutate: func(t *testing.T, tree string) {
				os.RemoveAll(filepath.Join(tree, "usr/sbin/rackboot-agent"))
				os.RemoveAll(filepath.Join(tree, "etc/systemd/system/sysinit.target.wants"))
			},
			want: Expect{Hostname: "placeholder"},
		},
		"machine-id not empty": {
			mutate: write("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
			errs:   []string{"/etc/machine-id: holds 33 bytes"},
		},
		"machine-id missing": {
			mutate: remove("etc/machine-id"),
			errs:   []string{"/etc/machine-id: missing"},
		},
		"ssh host keys": {
			mutate: func(t *testing.T, tree string) {
				write("etc/ssh/ssh_host_ed25519_key", "key")(t, tree)
				write("etc/ssh/ssh_host_ed25519_key.pub", "key")(t, tree)
			},
			errs: []string{"/etc/ssh/ssh_host_ed25519_key: SSH host key", "/etc/ssh/ssh_host_ed25519_key.pub: SSH host key"},
		},
		"sshd without keygen": {
			mutate: remove("etc/systemd/system/ssh.service.requires", "etc/systemd/system/multi-user.target.wants"),
			errs:   []string{"/usr/sbin/sshd: installed, but nothing makes host keys", "rackboot-ssh-keygen.service: not enabled"},
		},
		"dhcp lease": {
			mutate: write("var/lib/dhcp/dhclient.eth0.leases", "lease {}"),
			errs:   []string{"/var/lib/dhcp/dhclient.eth0.leases: DHCP lease"},
		},
		"networkd lease": {
			mutate: write("var/lib/systemd/netif/leases/2", "ADDRESS=10.0.0.2"),
			errs:   []string{"/var/lib/systemd/netif/leases/2: DHCP lease"},
		},
		"log file": {
			mutate: write("var/log/apt/history.log", "Start-Date: 2025-01-01"),
			errs:   []string{"/var/log/apt/history.log: in /var/log"},
		},
		"empty log file": {
			mutate: write("var/log/wtmp", ""),
			errs:   []string{"/var/log/wtmp: in /var/log"},
		},
		"log symlink": {
			mutate: func(t *testing.T, tree string) {
				os.Symlink("../../usr/share/doc/systemd/README.logs", filepath.Join(tree, "var/log/README"))
			},
			errs: []string{"/var/log/README: in /var/log"},
		},
		"journal": {
			mutate: write("var/log/journal/0123/system.journal", "LPKSHHRH"),
			errs:   []string{"/var/log/journal/0123/system.journal: in /var/log"},
		},
		"build missing": {
			mutate: remove("build"),
			errs:   []string{"/build: missing"},
		},
		"build not empty": {
			mutate: write("build/leftover", "x"),
			errs:   []string{"/build/leftover: in /build"},
		},
		"build is a file": {
			mutate: func(t *testing.T, tree string) {
				remove("build")(t, tree)
				write("build", "x")(t, tree)
			},
			errs: []string{"/build: not a directory"},
		},
		"hostname": {
			mutate: write("etc/hostname", "buildhost\n"),
			errs:   []string{`/etc/hostname: is "buildhost\n", want the placeholder "placeholder\n"`},
		},
		"agent missing": {
			mutate: remove("usr/sbin/rackboot-agent"),
			errs:   []string{"/usr/sbin/rackboot-agent: the rackboot agent is missing"},
		},
		"agent not executable": {
			mutate: func(t *testing.T, tree string) { os.Chmod(filepath.Join(tree, "usr/sbin/rackboot-agent"), 0o644) },
			errs:   []string{"/usr/sbin/rackboot-agent: the rackboot agent is not an executable file"},
		},
		"agent unit missing": {
			mutate: remove("usr/local/lib/systemd/system/rackboot-agent.service"),
			errs:   []string{"rackboot-agent.service: the rackboot agent's unit is missing"},
		},
		"agent unit not enabled": {
			mutate: remove("etc/systemd/system/sysinit.target.wants"),
			errs:   []string{"rackboot-agent.service: not enabled (none of /etc/systemd/system/sysinit.target.wants/rackboot-agent.service)"},
		},
		"agent unit masked": {
			mutate: func(t *testing.T, tree string) {
				os.Symlink("/dev/null", filepath.Join(tree, "etc/systemd/system/rackboot-agent.service"))
			},
			errs: []string{"rackboot-agent.service: masked"},
		},
		"networkd enabled": {
			mutate: func(t *testing.T, tree string) {
				p := filepath.Join(tree, "etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
				os.Symlink("/usr/lib/systemd/system/systemd-networkd.service", p)
			},
			errs: []string{"systemd-networkd.service: enabled: it would reconfigure the boot interface"},
		},
		"ifupdown eth0": {
			mutate: write("etc/network/interfaces", "auto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n"),
			errs:   []string{"ifupdown brings up eth0"},
		},
		"firstboot not masked": {
			mutate: remove("etc/systemd/system/systemd-firstboot.service"),
			errs:   []string{"systemd-firstboot.service: not masked"},
		},
		"random seed and dbus id": {
			mutate: func(t *testing.T, tree string) {
				write("var/lib/systemd/random-seed", "seed")(t, tree)
				write("var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n")(t, tree)
			},
			errs: []string{"/var/lib/systemd/random-seed: per-machine secret", "/var/lib/dbus/machine-id: a D-Bus machine ID"},
		},
		"dbus id symlink": {
			mutate: func(t *testing.T, tree string) {
				os.Symlink("/etc/machine-id", filepath.Join(tree, "var/lib/dbus/machine-id"))
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tree := goodTree(t)
			tc.mutate(t, tree)
			w := tc.want
			if w == (Expect{}) {
				w = want
			}
			err := Inspect(t.Context(), mkfsTest(t, tree), w)
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatalf("Inspect = %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Inspect = nil; want errors %q", tc.errs)
			}
			for _, e := range tc.errs {
				if !strings.Contains(err.Error(), e) {
					t.Errorf("Inspect = %v\nwant it to contain %q", err, e)
				}
			}
		})
	}
}

func TestInspectNotAnImage(t *testing.T) {
	t.Parallel()
	testenv.LookPath(t, "debugfs")
	p := filepath.Join(t.TempDir(), "junk.img")
	os.WriteFile(p, make([]byte, 1<<20), 0o644)
	if err := Inspect(t.Context(), p, Expect{Hostname: "x"}); err == nil || !strings.Contains(err.Error(), "not a root file system") {
		t.Errorf("Inspect(zeros) = %v; want not a root file system", err)
	}
}

func write(p, data string) func(*testing.T, string) {
	return func(t *testing.T, tree string) { writeTestFile(t, filepath.Join(tree, p), data, 0o644) }
}

func remove(paths ...string) func(*testing.T, string) {
	return func(t *testing.T, tree string) {
		for _, p := range paths {
			if err := os.RemoveAll(filepath.Join(tree, p)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

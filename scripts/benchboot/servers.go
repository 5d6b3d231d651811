package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// Ports the servers listen on, at serverIP.
const (
	tftpPort = 69
	httpPort = 8080
)

// fileName is the name of the transferred file in the boot tree.
const fileName = "bench.bin"

// bootFile is the boot file name the DHCP servers hand out.
const bootFile = "pxelinux.0"

// leaseSeconds is the lease time every DHCP server gives.
const leaseSeconds = 3600

// serverSpec describes how to run one server under test.
type serverSpec struct {
	name   string
	pkg    string   // Debian package, for the version line; empty for rackboot
	bin    string   // binary, looked up in PATH (rackboot: -rackboot)
	protos []string // what it serves: dhcp, tftp, http
	// command writes any configuration files for serving proto and returns
	// the argument vector and extra environment. The server must stay in
	// the foreground and log to its standard output or error.
	command func(s startInfo) (argv, env []string, err error)
	notes   map[string]string // how it is configured, by protocol, for the report
}

// serves reports whether the server serves proto (dhcp, tftp, http).
func (s *serverSpec) serves(proto string) bool { return slices.Contains(s.protos, proto) }

// startInfo is what a server command is built from.
type startInfo struct {
	bin   string // absolute path of the server binary
	proto string // the protocol this instance serves
	dir   string // fresh private directory: configuration, state, leases
	tree  string // boot tree holding fileName
	image string // a small image (rackboot's configuration needs one)
}

// lookPath returns the absolute path of the server's binary, or an error
// saying why it can't be measured.
func (s *serverSpec) lookPath(cfg config) (string, error) {
	if s.name != "rackboot" {
		p, err := exec.LookPath(s.bin)
		if err != nil {
			return "", fmt.Errorf("finding %s (Debian %s): %w", s.bin, s.pkg, err)
		}
		return p, nil
	}
	return benchkit.RackbootBinary(cfg.rackboot)
}

func writeFile(path, text string) error {
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	return nil
}

// specs returns the server descriptions by name.
func specs() map[string]*serverSpec {
	mask := "255.255.0.0"
	return map[string]*serverSpec{
		"rackboot": {
			name:    "rackboot",
			protos:  []string{"dhcp", "tftp", "http"},
			command: rackbootCommand,
			notes: map[string]string{
				"dhcp": "rackboot: serve with dhcp.mode full on " + serverIf + ", probe false, conflict_check 0s (no ARP check of pool addresses, as dnsmasq's --no-ping and Kea), range " + poolStart.String() + "-" + poolEnd.String() +
					", lease_time 1h, no boards and boot.unknown_boards identify (every client is an unknown machine and gets a boot file), " +
					"fresh state_dir per measurement: leases and seen machines in SQLite (WAL, synchronous FULL: an fsync per commit), " +
					"log level info (a line per DISCOVER, REQUEST and lease) to a file",
				"tftp": "rackboot: serve, boot.tree holding the file, log level info",
				"http": "rackboot: serve, boot.tree holding the file, log level info",
			},
		},
		"dnsmasq": {
			name:   "dnsmasq",
			pkg:    "dnsmasq-base",
			bin:    "dnsmasq",
			protos: []string{"dhcp", "tftp"},
			command: func(s startInfo) ([]string, []string, error) {
				argv := []string{s.bin, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
					"--interface=" + serverIf, "--bind-interfaces", "--log-facility=-",
					"--pid-file=" + filepath.Join(s.dir, "dnsmasq.pid")}
				switch s.proto {
				case "dhcp":
					argv = append(argv,
						fmt.Sprintf("--dhcp-range=%s,%s,%s,%d", poolStart, poolEnd, mask, leaseSeconds),
						fmt.Sprintf("--dhcp-lease-max=%d", maxHandshakes+1000),
						"--dhcp-leasefile="+filepath.Join(s.dir, "dnsmasq.leases"),
						"--dhcp-authoritative", "--no-ping",
						"--dhcp-boot="+bootFile+",,"+serverIP.String())
				case "tftp":
					argv = append(argv, "--enable-tftp", "--tftp-root="+s.tree)
				}
				return argv, nil, nil
			},
			notes: map[string]string{
				"dhcp": "dnsmasq: --dhcp-range over the same pool, 1h leases, --dhcp-lease-max 61000, --dhcp-authoritative, --no-ping, " +
					"--dhcp-boot, --dhcp-leasefile in a fresh directory per measurement (dnsmasq rewrites the whole file and fsyncs it " +
					"after changes), default logging (a line per packet) to a file",
				"tftp": "dnsmasq: --enable-tftp --tftp-root, defaults otherwise (--tftp-max 50), default logging to a file",
			},
		},
		"kea": {
			name:    "kea",
			pkg:     "kea-dhcp4-server",
			bin:     "kea-dhcp4",
			protos:  []string{"dhcp"},
			command: func(s startInfo) ([]string, []string, error) { return keaCommand(s, false) },
			notes: map[string]string{
				"dhcp": "kea: kea-dhcp4 with raw sockets on " + serverIf + ", the same pool, 1h leases, authoritative, next-server and boot-file-name, " +
					"memfile lease database persisted to a CSV file in a fresh directory per measurement (a line appended on every change, " +
					"no fsync; lfc-interval 0: no cleanup), multi-threading off (Kea 2.2's default), loggers at INFO to a file",
			},
		},
		"kea-mt": {
			name:    "kea-mt",
			pkg:     "kea-dhcp4-server",
			bin:     "kea-dhcp4",
			protos:  []string{"dhcp"},
			command: func(s startInfo) ([]string, []string, error) { return keaCommand(s, true) },
			notes: map[string]string{
				"dhcp": "kea-mt: the same as kea, with multi-threading on (thread-pool-size 0 = one thread per core, packet-queue-size 64; " +
					"the default from Kea 2.4 on)",
			},
		},
		"tftpd-hpa": {
			name:   "tftpd-hpa",
			pkg:    "tftpd-hpa",
			bin:    "in.tftpd",
			protos: []string{"tftp"},
			command: func(s startInfo) ([]string, []string, error) {
				return []string{s.bin, "--foreground", "--address", fmt.Sprintf("%s:%d", serverIP, tftpPort),
					"--user", "tftp", "--secure", s.tree}, nil, nil
			},
			notes: map[string]string{
				"tftp": "tftpd-hpa: in.tftpd --foreground --user tftp --secure (Debian's defaults), a process per transfer, " +
					"default maximum blksize (65464)",
			},
		},
		"nginx": {
			name:    "nginx",
			pkg:     "nginx",
			bin:     "nginx",
			protos:  []string{"http"},
			command: nginxCommand,
			notes: map[string]string{
				"http": "nginx: worker_processes auto, sendfile on, tcp_nopush on, access log to a file (Debian's defaults), " +
					"root = the boot tree",
			},
		},
	}
}

func rackbootCommand(s startInfo) ([]string, []string, error) {
	dhcp, unknown := "  mode: off\n", "ignore"
	if s.proto == "dhcp" {
		// Unknown PXE clients get a boot file, as dnsmasq's and Kea's do.
		unknown = "identify"
		dhcp = fmt.Sprintf(`  mode: full
  interfaces: [%s]
  range_start: %s
  range_end: %s
  lease_time: %ds
  probe: false
  conflict_check: 0s
`, serverIf, poolStart, poolEnd, leaseSeconds)
	}
	conf := fmt.Sprintf(`state_dir: %s
log_level: info
address: %s
nbd: {listen: "%s:10809"}
http: {listen: "%s:%d"}
tftp: {listen: "%s:%d"}
dhcp:
%simages: [{name: minimal, path: %s}]
boot:
  tree: %s
  kernels: {amd64: {kernel: amd64/vmlinuz, initrd: amd64/initrd.img}}
  unknown_boards: %s
boards: []
`, filepath.Join(s.dir, "state"), serverIP, serverIP, serverIP, httpPort, serverIP, tftpPort, dhcp, s.image, s.tree, unknown)
	path := filepath.Join(s.dir, "rackboot.yaml")
	if err := writeFile(path, conf); err != nil {
		return nil, nil, err
	}
	return []string{s.bin, "serve", "--config", path}, nil, nil
}

// keaCommand writes the Kea configuration, with or without multi-threading.
func keaCommand(s startInfo, mt bool) ([]string, []string, error) {
	type obj = map[string]any
	conf := obj{"Dhcp4": obj{
		"interfaces-config": obj{"interfaces": []string{serverIf}, "dhcp-socket-type": "raw"},
		"lease-database": obj{
			"type":         "memfile",
			"persist":      true,
			"name":         filepath.Join(s.dir, "kea-leases4.csv"),
			"lfc-interval": 0,
		},
		"valid-lifetime":  leaseSeconds,
		"authoritative":   true,
		"next-server":     serverIP.String(),
		"boot-file-name":  bootFile,
		"multi-threading": obj{"enable-multi-threading": mt, "thread-pool-size": 0, "packet-queue-size": 64},
		"subnet4": []obj{{
			"id":     1,
			"subnet": subnet.String(),
			"pools":  []obj{{"pool": poolStart.String() + " - " + poolEnd.String()}},
		}},
		"loggers": []obj{{
			"name":           "kea-dhcp4",
			"output_options": []obj{{"output": "stdout"}},
			"severity":       "INFO",
		}},
	}}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, nil, fmt.Errorf("encoding the Kea configuration: %w", err)
	}
	path := filepath.Join(s.dir, "kea-dhcp4.json")
	if err := writeFile(path, string(b)); err != nil {
		return nil, nil, err
	}
	env := []string{"KEA_LOCKFILE_DIR=" + s.dir, "KEA_PIDFILE_DIR=" + s.dir}
	return []string{s.bin, "-c", path}, env, nil
}

func nginxCommand(s startInfo) ([]string, []string, error) {
	var temps strings.Builder
	for _, t := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		p := filepath.Join(s.dir, t)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, nil, fmt.Errorf("creating nginx directories: %w", err)
		}
		fmt.Fprintf(&temps, "  %s_temp_path %s;\n", t, p)
	}
	conf := fmt.Sprintf(`worker_processes auto;
pid %[1]s/nginx.pid;
error_log stderr;
events { worker_connections 1024; }
http {
  sendfile on;
  tcp_nopush on;
  types_hash_max_size 2048;
  default_type application/octet-stream;
  access_log %[1]s/access.log;
%[2]s  server {
    listen %[3]s:%[4]d;
    root %[5]s;
  }
}
`, s.dir, temps.String(), serverIP, httpPort, s.tree)
	path := filepath.Join(s.dir, "nginx.conf")
	if err := writeFile(path, conf); err != nil {
		return nil, nil, err
	}
	return []string{s.bin, "-p", s.dir, "-c", path, "-g", "daemon off;"}, nil, nil
}

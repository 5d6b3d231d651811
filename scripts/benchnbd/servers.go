package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// serverSpec describes how to run one NBD server under test.
type serverSpec struct {
	name        string
	readExport  string // export used by the read rows
	writeExport string // copy-on-write export used by the write rows
	// daemon means the command forks into the background, writes its PID to
	// startInfo.pidFile and exits.
	daemon bool
	// command writes any configuration files and returns the argument vector
	// and extra environment.
	command func(s startInfo) (argv, env []string, err error)
	note    string // how the server is configured, for the report
}

// startInfo is what a server command is built from.
type startInfo struct {
	bin     string // absolute path of the server binary
	image   string // base image
	layer   string // private directory for the write layer
	dir     string // private directory for configuration, logs and PID files
	port    int    // TCP port on 127.0.0.1
	pidFile string
}

// lookPath returns the absolute path of the server's binary, or an error
// saying why it can't be measured.
func (s *serverSpec) lookPath(cfg config) (string, error) {
	if s.name != "rackboot" {
		p, err := exec.LookPath(s.name)
		if err != nil {
			return "", fmt.Errorf("finding %s: %w", s.name, err)
		}
		return p, nil
	}
	return benchkit.RackbootBinary(cfg.rackboot)
}

// specs returns the server descriptions by name.
func specs() map[string]*serverSpec {
	port := func(s startInfo) string { return strconv.Itoa(s.port) }
	return map[string]*serverSpec{
		"rackboot": {
			name:        "rackboot",
			readExport:  "img",
			writeExport: "img@bench",
			command: func(s startInfo) ([]string, []string, error) {
				return []string{s.bin, "nbd",
					"--listen", "127.0.0.1:" + port(s),
					"--image", "img=" + s.image,
					"--state", s.layer}, nil, nil
			},
			note: "rackboot: reads from export img (read-only), writes to img@bench (copy-on-write session); write layer = du of --state",
		},
		"nbd-server": {
			name:        "nbd-server",
			readExport:  "bench",
			writeExport: "bench",
			daemon:      true,
			command: func(s startInfo) ([]string, []string, error) {
				conf := filepath.Join(s.dir, "nbd-server.conf")
				text := fmt.Sprintf(`[generic]
allowlist = true
listenaddr = 127.0.0.1
port = %d
[bench]
exportname = %s
copyonwrite = true
cowdir = %s
`, s.port, s.image, s.layer)
				if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
					return nil, nil, fmt.Errorf("writing nbd-server config: %w", err)
				}
				return []string{s.bin, "-C", conf, "-p", s.pidFile}, nil, nil
			},
			note: "nbd-server: export bench with copyonwrite = true and cowdir (a diff per connection, dropped on disconnect, " +
				"so its size is measured while the writer is still connected; its page map, 4 bytes per 4 KiB of export, is in RAM and not counted); default max_threads (4), at which " +
				"Debian's 3.24 corrupts data when COW writes overlap: its write rows do not come from a data-safe setup",
		},
		"qemu-nbd": {
			name: "qemu-nbd",
			command: func(s startInfo) ([]string, []string, error) {
				return []string{s.bin, "--snapshot", "-f", "raw", "-t", "--shared=0",
					"-b", "127.0.0.1", "-p", port(s), s.image}, []string{"TMPDIR=" + s.layer}, nil
			},
			note: "qemu-nbd: --snapshot -f raw -t --shared=0 (no client limit), default export; write layer = its temporary qcow2 " +
				"(64 KiB clusters) in a private TMPDIR",
		},
		"nbdkit": {
			name: "nbdkit",
			command: func(s startInfo) ([]string, []string, error) {
				return []string{s.bin, "-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", port(s),
					"--filter=cow", "file", s.image}, []string{"TMPDIR=" + s.layer}, nil
			},
			note: "nbdkit: --filter=cow file, default export and threads; write layer = the cow filter's temporary file " +
				"(64 KiB blocks) in a private TMPDIR",
		},
	}
}

// Package identity writes the per-boot identity of a board into its new
// root before switch_root: /etc/hostname (the board name), an empty
// /etc/machine-id (systemd then makes a fresh transient ID each boot,
// never one baked into the shared master image) and /etc/rackboot/boot.json
// for agents in the booted system.
package identity

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Path is where Write puts boot.json inside the root.
const Path = "/etc/rackboot/boot.json"

// Identity is /etc/rackboot/boot.json.
type Identity struct {
	Board string `json:"board"`
	MAC   string `json:"mac"`
	IP    string `json:"ip,omitempty"`
	// Token authenticates the board's reports for this boot.
	Token string `json:"token"`
	// NBD is the root export URL, nbd://HOST:PORT/EXPORT.
	NBD string `json:"nbd"`
	// NBDAddr is the NBD server as HOST:PORT, the address the root was
	// attached from (the agent reconnects there).
	NBDAddr string `json:"nbd_addr"`
	Export  string `json:"export"`
	// Device is the root's NBD device, /dev/nbdN, and NBDIndex its N.
	Device   string `json:"device"`
	NBDIndex int    `json:"nbd_index"`
	// Size is the export's size in bytes, as negotiated at attach: a
	// reconnect must find the same.
	Size int64 `json:"size"`
	// Appliance is the appliance's HTTP base URL.
	Appliance string `json:"appliance"`
	// BuildDisk is the device mounted at /build, empty if none.
	BuildDisk string `json:"build_disk,omitempty"`
}

// Read reads a boot.json written by Write and checks that it says where
// the root comes from (nbd_addr, export, device): what keeping the root
// connected needs.
func Read(path string) (Identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Identity{}, err
	}
	var id Identity
	if err := json.Unmarshal(b, &id); err != nil {
		return Identity{}, fmt.Errorf("parsing %s: %w", path, err)
	}
	var missing []string
	for _, f := range []struct{ name, v string }{
		{"nbd_addr", id.NBDAddr}, {"export", id.Export}, {"device", id.Device},
	} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return id, fmt.Errorf("%s: missing %s", path, strings.Join(missing, ", "))
	}
	return id, nil
}

// Write writes the identity files under root.
func Write(root string, id Identity) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{"etc/hostname", []byte(id.Board + "\n"), 0o644},
		{"etc/machine-id", nil, 0o444},
		// The token lets its holder report as this board: root only.
		{strings.TrimPrefix(Path, "/"), append(b, '\n'), 0o600},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		os.Remove(p) // machine-id may be read-only
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
	}
	return nil
}

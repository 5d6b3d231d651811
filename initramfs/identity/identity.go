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
)

// Identity is /etc/rackboot/boot.json.
type Identity struct {
	Board string `json:"board"`
	MAC   string `json:"mac"`
	IP    string `json:"ip,omitempty"`
	// Token authenticates the board's reports for this boot.
	Token string `json:"token"`
	// NBD is the root export URL, nbd://HOST:PORT/EXPORT.
	NBD    string `json:"nbd"`
	Export string `json:"export"`
	// Device is the root's NBD device, /dev/nbdN.
	Device string `json:"device"`
	// Appliance is the appliance's HTTP base URL.
	Appliance string `json:"appliance"`
	// BuildDisk is the device mounted at /build, empty if none.
	BuildDisk string `json:"build_disk,omitempty"`
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
		{"etc/rackboot/boot.json", append(b, '\n'), 0o600},
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

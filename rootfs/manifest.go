package rootfs

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Manifest is out/images/NAME-ARCH/manifest.json: what an image is made
// of. It holds no build time or host detail, so that two builds of the
// same recipe with the same packages give the same manifest too.
type Manifest struct {
	Recipe string `json:"recipe"`
	// RecipeSHA256 is [Recipe.Hash].
	RecipeSHA256    string   `json:"recipe_sha256"`
	Arch            string   `json:"arch"`
	Suite           string   `json:"suite"`
	Variant         string   `json:"variant"`
	Mirrors         []string `json:"mirrors"`
	SourceDateEpoch int64    `json:"source_date_epoch"`
	// Hostname is the placeholder in /etc/hostname.
	Hostname   string     `json:"hostname"`
	Image      Image      `json:"image"`
	Filesystem Filesystem `json:"filesystem"`
	// Agent is null when the image was built without the agent.
	Agent *Agent `json:"agent"`
	// Warnings are what a user of the image must know, such as a
	// missing agent.
	Warnings []string `json:"warnings,omitempty"`
	// Tools are the versions of the programs that made the image.
	Tools map[string]string `json:"tools"`
	// Packages are every package installed in the image, from its
	// /var/lib/dpkg/status, sorted by name and architecture.
	Packages []Package `json:"packages"`
}

// Image is the image file.
type Image struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	// Size is the file's length in bytes (it is sparse: its blocks on
	// disk are fewer).
	Size int64 `json:"size"`
}

// Filesystem is the ext4 file system in the image.
type Filesystem struct {
	Type     string `json:"type"`
	Label    string `json:"label"`
	UUID     string `json:"uuid"`
	HashSeed string `json:"hash_seed"`
	Size     int64  `json:"size"`
}

// Agent is the rackboot agent in the image.
type Agent struct {
	Package    string `json:"package"`
	Version    string `json:"version,omitempty"`
	Path       string `json:"path"`
	SHA256     string `json:"sha256"`
	UnitPath   string `json:"unit_path"`
	UnitSHA256 string `json:"unit_sha256"`
}

// Package is one installed Debian package.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
}

// ReadManifest reads a manifest.json.
func ReadManifest(name string) (*Manifest, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return &m, nil
}

// readDpkgStatus returns the installed packages in a dpkg status file.
func readDpkgStatus(name string) ([]Package, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("reading the image's dpkg status: %w", err)
	}
	defer f.Close()
	pkgs, err := parseDpkgStatus(bufio.NewScanner(f))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return pkgs, nil
}

func parseDpkgStatus(sc *bufio.Scanner) ([]Package, error) {
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var pkgs []Package
	var p Package
	var status string
	flush := func() {
		if p.Name != "" && strings.HasSuffix(status, " installed") {
			pkgs = append(pkgs, p)
		}
		p, status = Package{}, ""
	}
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			flush()
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(line, " ") {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			p.Name = v
		case "Version":
			p.Version = v
		case "Architecture":
			p.Arch = v
		case "Status":
			status = v
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(pkgs, func(a, b Package) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Arch, b.Arch))
	})
	return pkgs, nil
}

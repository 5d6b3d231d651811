package images

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MaxManifestSize bounds a manifest file, in bytes.
const MaxManifestSize = 16 << 20

// Manifest describes a root image as `make rootfs` builds it. The
// catalog reads the fields below and keeps the file itself verbatim, so
// fields it doesn't know survive import.
type Manifest struct {
	// Name is the recipe's name ("name", or "recipe" in the JSON).
	Name string
	// Arch is the Debian architecture of the root: amd64, arm64, armhf.
	Arch string
	// Suite is the Debian suite, for listings.
	Suite string
	// Epoch is the date of the package snapshot the image was built from
	// ("epoch", or "source_date_epoch" in the JSON); zero if the manifest
	// has none.
	Epoch time.Time
	// RecipeSHA256 identifies the recipe the image was built from.
	RecipeSHA256 string
	// Packages are the packages installed in the image: a list of
	// {"name", "version"} objects, or of names.
	Packages []Package
	// SHA256 is the image file's sha256 in lowercase hex, and Size its
	// length in bytes (0 if the manifest doesn't say, or says it other
	// than as an integer). Both are read from the top level or from an
	// "image" object.
	SHA256 string
	Size   int64
	// Raw is the manifest file as read.
	Raw []byte
}

// Package is an installed package.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// manifestJSON is the manifest as the catalog decodes it.
type manifestJSON struct {
	Name         string          `json:"name"`
	Recipe       string          `json:"recipe"`
	Arch         string          `json:"arch"`
	Suite        string          `json:"suite"`
	Epoch        json.RawMessage `json:"epoch"`
	SourceDate   json.RawMessage `json:"source_date_epoch"`
	RecipeSHA256 string          `json:"recipe_sha256"`
	Packages     json.RawMessage `json:"packages"`
	SHA256       string          `json:"sha256"`
	Size         json.RawMessage `json:"size"`
	Image        *struct {
		SHA256 string          `json:"sha256"`
		Size   json.RawMessage `json:"size"`
	} `json:"image"`
}

var archRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_]{0,15}$`)

// ParseManifest decodes a manifest and checks the fields the catalog
// relies on: an arch and the image's sha256 are required.
func ParseManifest(b []byte) (Manifest, error) {
	if len(b) > MaxManifestSize {
		return Manifest{}, fmt.Errorf("manifest is %d bytes, more than %d", len(b), MaxManifestSize)
	}
	var j manifestJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return Manifest{}, fmt.Errorf("decoding manifest: %w", err)
	}
	m := Manifest{
		Name: j.Name, Arch: j.Arch, Suite: j.Suite, RecipeSHA256: j.RecipeSHA256,
		Packages: parsePackages(j.Packages), SHA256: j.SHA256, Size: parseSize(j.Size), Raw: bytes.Clone(b),
	}
	if m.Name == "" {
		m.Name = j.Recipe
	}
	if j.Image != nil {
		if m.SHA256 == "" {
			m.SHA256 = j.Image.SHA256
		}
		if m.Size == 0 {
			m.Size = parseSize(j.Image.Size)
		}
	}
	m.SHA256 = strings.ToLower(m.SHA256)
	switch {
	case m.SHA256 == "":
		return Manifest{}, errors.New("manifest has no sha256 for the image")
	case !validSHA256(m.SHA256):
		return Manifest{}, fmt.Errorf("manifest sha256 %q: want 64 hex digits", m.SHA256)
	case m.Size < 0:
		return Manifest{}, fmt.Errorf("manifest size %d: negative", m.Size)
	case m.Arch == "":
		return Manifest{}, errors.New("manifest has no arch")
	case !archRE.MatchString(m.Arch):
		return Manifest{}, fmt.Errorf("manifest arch %q: want a Debian architecture name", m.Arch)
	}
	if len(j.Epoch) == 0 {
		j.Epoch = j.SourceDate
	}
	t, err := parseEpoch(j.Epoch)
	if err != nil {
		return Manifest{}, fmt.Errorf("manifest epoch: %w", err)
	}
	m.Epoch = t
	return m, nil
}

// parseSize reads a size in bytes; anything but a JSON integer (such as
// a recipe's "2GiB") is taken as no size.
func parseSize(raw json.RawMessage) int64 {
	var n int64
	if json.Unmarshal(raw, &n) != nil {
		return 0
	}
	return n
}

// parsePackages reads [{"name","version"}] or a list of names; anything
// else is taken as no list.
func parsePackages(raw json.RawMessage) []Package {
	var pkgs []Package
	if json.Unmarshal(raw, &pkgs) == nil {
		return pkgs
	}
	var names []string
	if json.Unmarshal(raw, &names) != nil {
		return nil
	}
	pkgs = nil // Unmarshal may have filled some before failing
	for _, n := range names {
		pkgs = append(pkgs, Package{Name: n})
	}
	return pkgs
}

func validSHA256(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32 && s == strings.ToLower(s)
}

// parseEpoch reads a snapshot date: Unix seconds (SOURCE_DATE_EPOCH, as
// a number or a string), RFC 3339, a snapshot.debian.org timestamp
// (20250601T000000Z) or a date (2025-06-01, 20250601). Absent or null is
// the zero time.
func parseEpoch(raw json.RawMessage) (time.Time, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		return unixEpoch(string(n))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return time.Time{}, fmt.Errorf("want a number or a string, got %s", raw)
	}
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := unixEpoch(s); err == nil {
		return t, nil
	}
	for _, layout := range []string{time.RFC3339, "20060102T150405Z", "2006-01-02", "20060102"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: want Unix seconds, RFC 3339, 20060102T150405Z or a date", s)
}

func unixEpoch(s string) (time.Time, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	if n < 0 || n > 253402300799 { // through 9999-12-31
		return time.Time{}, fmt.Errorf("%d: out of range", n)
	}
	return time.Unix(n, 0).UTC(), nil
}

package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Defaults for fields that are absent from the config file (or set to null).
const (
	// DefaultLogLevel is the default for [Config.LogLevel].
	DefaultLogLevel = "info"
	// DefaultNBDListen is the default for [NBD.Listen]: the IANA-assigned
	// NBD port on all addresses.
	DefaultNBDListen = ":10809"
	// DefaultDrainTimeout is the default for [NBD.DrainTimeout].
	DefaultDrainTimeout = 30 * time.Second
	// DefaultMaxConnections is the default for [NBD.MaxConnections].
	DefaultMaxConnections = 1024
)

// Config is rackboot's configuration, as read from its YAML file by [Load]
// or [Parse]. A Config returned by them is valid and has its defaults
// applied and its relative paths resolved. It is not modified afterwards,
// so it is safe for concurrent reads.
type Config struct {
	// To add a section, add a field with a `yaml` tag, set its defaults in
	// defaults() and check it in validate(); decoding needs no changes.

	// StateDir is the directory that holds write layers and other state.
	// Required. The server creates it if missing; Load does not check it.
	StateDir string `yaml:"state_dir"`
	// LogLevel is one of debug, info, warn or error; see [Config.Level].
	LogLevel string `yaml:"log_level"`
	// NBD configures the NBD server.
	NBD NBD `yaml:"nbd"`
	// Images are the base images that boards can boot.
	Images []Image `yaml:"images"`

	file  string         // file name for errors
	lines map[string]int // field path ("images[1].name") → line in file
}

// NBD configures the NBD server.
type NBD struct {
	// Listen is the host:port to listen on. The port must be numeric;
	// port 0 (any free port) is allowed for tests. Default DefaultNBDListen.
	Listen string `yaml:"listen"`
	// DrainTimeout bounds how long shutdown waits for in-flight requests.
	// It is written as a Go duration ("30s", "1m30s") and must be
	// positive. Default DefaultDrainTimeout.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// MaxConnections is the maximum number of concurrent NBD connections,
	// at least 1. Default DefaultMaxConnections.
	MaxConnections int `yaml:"max_connections"`
}

// Image is a base image that boards boot from. Boards never write to it:
// writes go to a per-session layer in [Config.StateDir].
type Image struct {
	// Name identifies the image: 1 to 64 characters from [A-Za-z0-9._-],
	// starting with a letter or digit, unique within the file. It is used
	// in NBD export names of the form NAME@SESSION, so it cannot contain '@'.
	Name string `yaml:"name"`
	// Path is the image file. A relative path is resolved against the
	// directory of the config file. Required. Load does not check that it
	// exists; see [Config.CheckFiles].
	Path string `yaml:"path"`
}

// defaults returns a Config holding the default of every field; the file
// is decoded on top of it.
func defaults() *Config {
	return &Config{
		LogLevel: DefaultLogLevel,
		NBD: NBD{
			Listen:         DefaultNBDListen,
			DrainTimeout:   DefaultDrainTimeout,
			MaxConnections: DefaultMaxConnections,
		},
	}
}

// Load reads, decodes and validates the config file at path. Relative paths
// in the file are resolved against the absolute directory of path.
//
// All problems in the file are reported together, joined with
// [errors.Join] and sorted by line, each as "file:line: field: problem",
// for example
//
//	rackboot.yaml:3: nbd.lisen: unknown field (known: listen, drain_timeout, max_connections)
//
// If the file cannot be read the error wraps the [fs.PathError]'s cause,
// so errors.Is(err, fs.ErrNotExist) reports a missing file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s: %s: %w", path, pe.Op, pe.Err)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: resolving directory: %w", path, err)
	}
	return Parse(path, data, dir)
}

// Parse decodes and validates a config file's contents. name is the file
// name used in errors, and relative paths in the file are joined to dir
// (left relative if dir is empty). Errors are reported as by [Load].
//
// Decoding is strict: unknown or duplicate keys, values of the wrong kind,
// YAML aliases and more than one YAML document are errors. An empty file
// decodes to the defaults (and then fails validation, since state_dir is
// required).
func Parse(name string, data []byte, dir string) (*Config, error) {
	c := defaults()
	c.file = name
	c.lines = map[string]int{}
	l := &errorList{file: name, lines: c.lines, bad: map[string]bool{}}
	if decodeFile(l, data, c) {
		c.validate(l, dir)
	}
	if err := l.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// imageName is the syntax of [Image.Name].
var imageName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// validate checks c's fields and resolves relative paths against dir.
// It reports problems to l, which skips fields that failed to decode.
func (c *Config) validate(l *errorList, dir string) {
	if c.StateDir == "" {
		l.addf("state_dir", "required")
	} else {
		c.StateDir = resolve(dir, c.StateDir)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		l.add("log_level", err)
	}

	if err := checkListen(c.NBD.Listen); err != nil {
		l.add("nbd.listen", err)
	}
	if c.NBD.DrainTimeout <= 0 {
		l.addf("nbd.drain_timeout", "must be positive, got %v", c.NBD.DrainTimeout)
	}
	if c.NBD.MaxConnections < 1 {
		l.addf("nbd.max_connections", "must be at least 1, got %d", c.NBD.MaxConnections)
	}

	names := map[string]string{} // name → path of its first use
	for i := range c.Images {
		img := &c.Images[i]
		p := fmt.Sprintf("images[%d]", i)
		switch {
		case img.Name == "":
			l.addf(p+".name", "required")
		case strings.Contains(img.Name, "@"):
			l.addf(p+".name", "invalid image name %q: '@' is reserved for NAME@SESSION export names", img.Name)
		case !imageName.MatchString(img.Name):
			l.addf(p+".name", "invalid image name %q: want 1-64 of [A-Za-z0-9._-], starting with a letter or digit", img.Name)
		default:
			if first, dup := names[img.Name]; dup {
				l.addf(p+".name", "duplicate image name %q (first at line %d)", img.Name, l.lineOf(first))
			} else {
				names[img.Name] = p + ".name"
			}
		}
		if img.Path == "" {
			l.addf(p+".path", "required")
		} else {
			img.Path = resolve(dir, img.Path)
		}
	}
}

// resolve joins a relative path to dir.
func resolve(dir, path string) string {
	if filepath.IsAbs(path) {
		return filepath.Clean(path)
	}
	return filepath.Join(dir, path)
}

// checkListen checks a host:port listen address. The port must be a number;
// port 0 (any free port) is allowed.
func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err)
		}
		return fmt.Errorf("invalid host:port %q: %w", addr, err)
	}
	if strings.ContainsAny(host, " \t\r\n") {
		return fmt.Errorf("invalid host:port %q: host contains white space", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("invalid host:port %q: port must be a number from 0 to 65535", addr)
	}
	return nil
}

// parseLevel parses a log level name. Only the four lowercase names are
// accepted, unlike [slog.Level.UnmarshalText].
func parseLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("invalid log level %q (want debug, info, warn or error)", s)
}

// Level returns [Config.LogLevel] as a [slog.Level]. It returns
// [slog.LevelInfo] if LogLevel is empty or invalid, which only happens if
// c was not returned by [Load] or [Parse].
func (c *Config) Level() slog.Level {
	lvl, err := parseLevel(c.LogLevel)
	if err != nil {
		return slog.LevelInfo
	}
	return lvl
}

// CheckFiles checks that every image path names an existing regular file
// (following symbolic links). Load and Parse do not touch the file system,
// so call CheckFiles where that is wanted, as check-config does. Problems
// are reported like those of [Load], for example
//
//	rackboot.yaml:9: images[0].path: stat /srv/img/minimal.img: no such file or directory
//
// and the errors wrap the [fs.PathError]s from [os.Stat].
func (c *Config) CheckFiles() error {
	l := &errorList{file: c.file, lines: c.lines}
	for i, img := range c.Images {
		p := fmt.Sprintf("images[%d].path", i)
		fi, err := os.Stat(img.Path)
		switch {
		case err != nil:
			l.add(p, err)
		case fi.IsDir():
			l.addf(p, "%s is a directory, not a regular file", img.Path)
		case !fi.Mode().IsRegular():
			l.addf(p, "%s is not a regular file (mode %v)", img.Path, fi.Mode())
		}
	}
	return l.err()
}

package tftp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rackboot/rackboot/internal/testenv"
)

// interopFiles are the files fetched with each external client and block
// size: empty, exact multiples of each block size, odd sizes and a few
// MiB.
var interopFiles = []int{0, 1, 512, 513, 1468, 3 * 1468, 65464, 2 * 65464, 512 * 4096, 3<<20 + 17}

var interopBlockSizes = []int{512, 1468, 65464}

// TestCurl fetches files with curl's TFTP client, and checks that each
// kind of refused name gets the right TFTP error: curl exits with 68 for
// error 1 (file not found) and 69 for error 2 (access violation).
func TestCurl(t *testing.T) {
	t.Parallel()
	curl := testenv.LookPath(t, "curl")
	dir, files := testTree(t)
	addr := startServer(t, &Server{Handler: FileHandler(openRoot(t, dir))})
	get := func(t *testing.T, urlPath string, blksize int) ([]byte, int, string) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "out")
		// --path-as-is keeps curl from resolving "..": the server must.
		cmd := exec.CommandContext(t.Context(), curl, "-sS", "--path-as-is", "--max-time", "60",
			"--tftp-blksize", fmt.Sprint(blksize), "-o", out, "tftp://"+addr+"/"+urlPath)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("running curl: %v", err)
		}
		got, _ := os.ReadFile(out)
		return got, cmd.ProcessState.ExitCode(), stderr.String()
	}
	for _, blksize := range interopBlockSizes {
		for _, n := range interopFiles {
			name := fmt.Sprintf("f%d", n)
			t.Run(fmt.Sprintf("%s/blksize=%d", name, blksize), func(t *testing.T) {
				t.Parallel()
				got, code, stderr := get(t, name, blksize)
				if code != 0 || !bytes.Equal(got, files[name]) {
					t.Fatalf("curl exit %d (%s), %d bytes; want 0 and the %d bytes of %s", code, stderr, len(got), n, name)
				}
			})
		}
	}
	refusals := []struct {
		path string // in the URL: curl decodes %XX before sending
		code int
	}{
		{"nope", 68},
		{"f1/x", 68},
		{"../secret", 69},
		{"a/../../secret", 69},
		{"/etc/passwd", 69}, // curl sends the URL path after its first "/"
		{"%2e%2e/secret", 69},
		{`a%5Cb`, 69},
		{"escape", 69},
		{"escape-abs", 69},
		{"pxelinux.cfg", 69},
	}
	for _, tt := range refusals {
		t.Run("refuse/"+tt.path, func(t *testing.T) {
			t.Parallel()
			got, code, stderr := get(t, tt.path, 1468)
			if code != tt.code {
				t.Errorf("curl %s: exit %d (%s); want %d", tt.path, code, stderr, tt.code)
			}
			if bytes.Contains(got, []byte("outside")) || bytes.Contains(got, []byte("root:")) {
				t.Errorf("curl %s got %q", tt.path, got)
			}
		})
	}
}

// TestAtftp fetches files with atftp, and checks the messages it reports
// for refusals.
func TestAtftp(t *testing.T) {
	t.Parallel()
	atftp := testenv.LookPath(t, "atftp")
	dir, files := testTree(t)
	addr := startServer(t, &Server{Handler: FileHandler(openRoot(t, dir))})
	host, port, _ := net.SplitHostPort(addr)
	get := func(t *testing.T, name string, blksize int) ([]byte, string, error) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "out")
		cmd := exec.CommandContext(t.Context(), atftp, "--get", "-r", name, "-l", out,
			"--option", fmt.Sprintf("blksize %d", blksize), host, port)
		output, err := cmd.CombinedOutput()
		got, _ := os.ReadFile(out)
		return got, string(output), err
	}
	for _, blksize := range interopBlockSizes {
		for _, n := range interopFiles {
			name := fmt.Sprintf("f%d", n)
			t.Run(fmt.Sprintf("%s/blksize=%d", name, blksize), func(t *testing.T) {
				t.Parallel()
				got, output, err := get(t, name, blksize)
				if err != nil || !bytes.Equal(got, files[name]) {
					t.Fatalf("atftp: %v (%s), %d bytes; want the %d bytes of %s", err, output, len(got), n, name)
				}
			})
		}
	}
	refusals := []struct{ name, msg string }{
		{"nope", "<file not found>"},
		{"../secret", "<access violation>"},
		{"a/../../secret", "<access violation>"},
		{"/etc/passwd", "<access violation>"},
		{`a\b`, "<access violation>"},
		{"escape", "<access violation>"},
	}
	for _, tt := range refusals {
		t.Run("refuse/"+tt.name, func(t *testing.T) {
			t.Parallel()
			got, output, err := get(t, tt.name, 1468)
			if err == nil || !strings.Contains(output, tt.msg) {
				t.Errorf("atftp %s: %v, output %q; want a failure with %s", tt.name, err, output, tt.msg)
			}
			if len(got) != 0 {
				t.Errorf("atftp %s got %q", tt.name, got)
			}
		})
	}
}

package identity

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWrite(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	id := Identity{Board: "b1", MAC: "52:54:00:7b:00:01", Token: "tok", NBD: "nbd://10.0.0.1:10809/tok", NBDAddr: "10.0.0.1:10809",
		Export: "tok", Device: "/dev/nbd1", NBDIndex: 1, Size: 1 << 30, Appliance: "http://10.0.0.1/"}
	for range 2 {
		if err := Write(root, id); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("etc/hostname"); got != "b1\n" {
		t.Errorf("hostname = %q", got)
	}
	if got := read("etc/machine-id"); got != "" {
		t.Errorf("machine-id = %q; want empty", got)
	}
	var got Identity
	if err := json.Unmarshal([]byte(read("etc/rackboot/boot.json")), &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(id, got); diff != "" {
		t.Errorf("boot.json (-want +got):\n%s", diff)
	}
	got, err := Read(filepath.Join(root, Path))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(id, got); diff != "" {
		t.Errorf("Read (-want +got):\n%s", diff)
	}
}

func TestReadMissing(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "boot.json")
	os.WriteFile(p, []byte(`{"board":"b1","token":"t"}`), 0o600)
	_, err := Read(p)
	if err == nil || !strings.Contains(err.Error(), "missing nbd_addr, export, device") {
		t.Errorf("Read = %v; want the missing fields named", err)
	}
}

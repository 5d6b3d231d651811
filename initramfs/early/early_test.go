package early

import "testing"

func TestStrings(t *testing.T) {
	t.Parallel()
	want := []string{
		"mount -t proc -o nosuid,nodev,noexec proc /proc",
		"mount -t sysfs -o nosuid,nodev,noexec sysfs /sys",
		"mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev",
		"mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run",
		"ln -s /proc/self/fd /dev/fd",
		"mkdir -p -m 1777 /tmp",
	}
	got := Rootfs()
	if len(got) != len(want) {
		t.Fatalf("Rootfs() has %d creators; want %d", len(got), len(want))
	}
	for i, c := range got {
		if c.String() != want[i] {
			t.Errorf("Rootfs()[%d] = %q; want %q", i, c.String(), want[i])
		}
	}
}

func TestDirAndSymlink(t *testing.T) {
	t.Parallel()
	d := t.TempDir()
	cs := []Creator{Dir{Path: d + "/a/b", Mode: 0o755}, Symlink{Target: "b", NewName: d + "/a/c"}, Symlink{Target: "x", NewName: d + "/a/c"}}
	if err := Create(cs); err != nil {
		t.Fatal(err)
	}
}

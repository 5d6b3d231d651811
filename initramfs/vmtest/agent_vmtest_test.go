//go:build vmtest && linux

package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rackboot/rackboot/agent"
	"github.com/rackboot/rackboot/internal/testenv"
)

// restartDelay is how long the NBD server stays dead.
const restartDelay = 3 * time.Second

func TestAgentReconnectAMD64(t *testing.T) { testAgentReconnect(t, archs["amd64"]) }
func TestAgentReconnectARM64(t *testing.T) { testAgentReconnect(t, archs["arm64"]) }
func TestAgentReconnectARMHF(t *testing.T) { testAgentReconnect(t, archs["armhf"]) }

// agentRoot makes a test root whose init starts rackboot-agent, runs the
// writer (testdata/writer) until it has written through a stall, then
// remounts the root read-only and powers off.
func agentRoot(t *testing.T, a arch, busybox string) string {
	t.Helper()
	tree := rootTree(t, busybox)
	bin := t.TempDir()
	for _, p := range []struct{ pkg, dest string }{
		{"../../cmd/rackboot-agent", "usr/sbin/rackboot-agent"},
		{"./testdata/writer", "usr/sbin/writer"},
	} {
		b, err := os.ReadFile(goBuild(t, a, bin, p.pkg))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(tree, p.dest), string(b), 0o755)
	}
	writeFile(t, filepath.Join(tree, "sbin/init"), `#!/bin/sh
bb=/bin/busybox
/usr/sbin/rackboot-agent --heartbeat 3s --poll 2s &
/usr/sbin/writer -file /data.log -stall 2s -after 60
$bb sync
$bb mount -o remount,ro /
echo "RACKBOOT-AGENT-ROOT done: $($bb cat /proc/$($bb pidof rackboot-agent)/status | $bb grep -E 'VmRSS|VmLck' | $bb tr -s ' \t' ' ' | $bb tr '\n' ' ')"
$bb poweroff -f
`, 0o755)
	return mkfs(t, tree, "64M")
}

func testAgentReconnect(t *testing.T, a arch) {
	testenvTools(t)
	nbdcopy := testenv.LookPath(t, "nbdcopy")
	testenv.LookPath(t, "debugfs")
	kernel, initrd, busybox := artifacts(t, a)
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()

	l := newLab(t, ctx, agentRoot(t, a, busybox))
	v := l.boot(a, kernel, initrd, buildDisk(t), l.cmdline(a))

	started := regexp.MustCompile(`msg="rackboot-agent started".*memory=(\S+)`)
	m, err := v.con.wait(ctx, 0, started, v.done)
	if err != nil {
		t.Fatalf("the agent never started: %v", err)
	}
	t.Logf("agent started after %s, memory %s", time.Since(v.start).Round(time.Millisecond), m[1])
	if _, err := v.con.wait(ctx, 0, regexp.MustCompile(`msg="watching the root's connection" .*notify=true poll=true`), v.done); err != nil {
		t.Fatalf("the agent isn't watching the root: %v", err)
	}
	if _, err := v.con.wait(ctx, 0, regexp.MustCompile(`WRITER i=50\b`), v.done); err != nil {
		t.Fatalf("the writer made no progress: %v", err)
	}

	// The appliance goes away in the middle of the writes and comes back.
	from := v.con.len()
	killed := time.Now()
	l.killNBD()
	time.Sleep(restartDelay)
	l.startNBD()
	restarted := time.Now()
	t.Logf("rackboot nbd killed (SIGKILL) and restarted after %s", restarted.Sub(killed).Round(time.Millisecond))

	reconnected := regexp.MustCompile(`msg="root reconnected".*dur=(\S+) attempts=(\d+)`)
	rm, err := v.con.wait(ctx, from, reconnected, v.done)
	if err != nil {
		t.Fatalf("the agent never reconnected: %v", err)
	}
	t.Logf("agent: root reconnected %s after the dead link, %d attempts; seen %s after the restart",
		rm[1], atoi(rm[2]), time.Since(restarted).Round(time.Millisecond))

	done := regexp.MustCompile(`WRITER-DONE (.*)`)
	dm, err := v.con.wait(ctx, from, done, v.done)
	if err != nil {
		t.Fatalf("the writer never finished: %v", err)
	}
	w := fields(dm[1])
	if _, err := v.con.wait(ctx, from, regexp.MustCompile(`RACKBOOT-AGENT-ROOT done`), v.done); err != nil {
		t.Fatalf("the root never shut down: %v", err)
	}
	<-v.done
	maxOp, _ := time.ParseDuration(w["maxop"])
	t.Logf("%s: writer: %s; root stalled %s (longest write+fsync) for a server down %s", a.name, dm[1], maxOp, restarted.Sub(killed).Round(time.Millisecond))
	if w["bad"] != "0" || w["good"] != w["records"] || w["timeout"] != "false" || w["stall_at"] == "-1" {
		t.Errorf("writer: %s; want every record read back after a stall", dm[1])
	}
	for _, s := range v.con.findAll(regexp.MustCompile(`(WRITER stall .*|WRITER bad .*|WRITER error.*|block nbd0: .*|EXT4-fs.*|I/O error.*|level=.*)`)) {
		t.Logf("console: %s", s[1])
	}

	// The appliance heard the reconnect and the heartbeats.
	var reconnect, beats int
	for _, s := range l.reps.all() {
		switch s.Name {
		case agent.StepReconnect:
			reconnect++
			t.Logf("report: %s %s %s", s.Name, s.Duration, s.Detail)
		case agent.StepHeartbeat:
			beats++
			if beats == 1 {
				t.Logf("first heartbeat detail: %s", s.Detail)
			}
		}
	}
	if reconnect != 1 || beats == 0 {
		t.Errorf("appliance heard %d reconnects and %d heartbeats; want 1 and some", reconnect, beats)
	}

	// On the appliance's side: every record is in the session, and the
	// filesystem is clean.
	img := filepath.Join(t.TempDir(), "session.img")
	l.srv.Run(t, nbdcopy, fmt.Sprintf("nbd://%s/%s", nbdAddr, export), img)
	out, err := exec.Command("debugfs", "-R", "cat /data.log", img).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	if n, err := checkRecords(out); err != nil || strconv.Itoa(n) != w["records"] {
		t.Errorf("session holds %d good records (%v); the writer wrote %s", n, err, w["records"])
	} else {
		t.Logf("session on the appliance holds all %d records", n)
	}
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn of the session: %v\n%s", err, out)
	}
}

// checkRecords checks the writer's records in b: in sequence, with good
// checksums.
func checkRecords(b []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	for ; sc.Scan(); n++ {
		line := sc.Text()
		head, sum, ok := cutLast(line, " ")
		if !ok || !strings.HasPrefix(line, fmt.Sprintf("rec %08d ", n)) || fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(head+" "))) != sum {
			return n, fmt.Errorf("record %d is %q", n, line)
		}
	}
	return n, nil
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

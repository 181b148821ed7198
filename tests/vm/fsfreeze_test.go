package vm

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// writerTag marks the console lines of the guest's writer loop: one line
// after each write to /mnt/data that completed.
const writerTag = "fsfreeze-writer wrote "

// writerScript writes to the frozen-to-be filesystem in a loop and reports
// each completed write on the serial console, which the host reads while
// the agent refuses everything but the fsfreeze commands.
const writerScript = `n=0
while [ ! -e /tmp/stop ]; do
  n=$((n+1))
  echo "$n" > /mnt/data/seq || exit 1
  echo "` + writerTag + `$n" > /dev/console
  sleep 0.1
done`

// qga sends one request on c and decodes its return value into out; an
// error reply fails the test, unless out is nil: then the reply is returned
// for the caller to check.
func qga(t *testing.T, c *harness.Conn, execute string, args any, out any) *harness.Reply {
	t.Helper()
	req := map[string]any{"execute": execute}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := c.Call(string(b) + "\n")
	if err != nil {
		t.Fatalf("%s: %v", execute, err)
	}
	r, _ := harness.Decode(t, line)
	if r.Error != nil {
		if out == nil {
			return &r
		}
		t.Fatalf("%s: %s: %s", execute, r.Error.Class, r.Error.Desc)
	}
	if out != nil {
		if err := json.Unmarshal(r.Return, out); err != nil {
			t.Fatalf("%s: reply %q: %v", execute, line, err)
		}
	}
	return &r
}

type execStatus struct {
	Exited   bool   `json:"exited"`
	ExitCode *int   `json:"exitcode"`
	Signal   *int   `json:"signal"`
	Out      []byte `json:"out-data"`
	Err      []byte `json:"err-data"`
}

// waitExec polls guest-exec-status until the process has exited.
func waitExec(t *testing.T, c *harness.Conn, pid int, within time.Duration) execStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var st execStatus
		qga(t, c, "guest-exec-status", map[string]any{"pid": pid}, &st)
		if st.Exited {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest-exec %d still running after %s", pid, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// guestSh runs sh -c script in the guest and returns its stdout.
func guestSh(t *testing.T, c *harness.Conn, script string) string {
	t.Helper()
	var started struct {
		PID int `json:"pid"`
	}
	qga(t, c, "guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", script}, "capture-output": true}, &started)
	st := waitExec(t, c, started.PID, 20*time.Second)
	if st.ExitCode == nil || *st.ExitCode != 0 {
		t.Fatalf("sh -c %q: %+v stderr %q", script, st, st.Err)
	}
	return string(st.Out)
}

func (vm *vmInstance) writerLines() int {
	return strings.Count(vm.console.String(), writerTag)
}

// waitWriter waits until the writer has reported more than n writes.
func (vm *vmInstance) waitWriter(t *testing.T, n int, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if m := vm.writerLines(); m > n {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's writer reported no write beyond %d within %s", n, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freezeStatus(t *testing.T, c *harness.Conn) string {
	t.Helper()
	var s string
	qga(t, c, "guest-fsfreeze-status", nil, &s)
	return s
}

// checkFsfreeze freezes the VM's ext4 data disk through the agent and shows
// that a write into it blocks while frozen and completes after the thaw:
// a writer loop started in the guest before the freeze reports each
// completed write on the serial console, which the host watches.
func checkFsfreeze(t *testing.T, vm *vmInstance) {
	c := dialRetry(t, vm.socket)
	defer c.Close()
	// Resynchronise as libvirt does before the first command.
	line, err := c.Call("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":4242}}\n")
	if r, delim := harness.Decode(t, line); err != nil || !delim || string(r.Return) != "4242" {
		t.Fatalf("resync: %q %v", line, err)
	}

	if m := guestSh(t, c, "grep ' /mnt/data ' /proc/mounts"); !strings.Contains(m, "/dev/vda /mnt/data ext4") {
		t.Fatalf("/mnt/data is not the ext4 disk in the guest: %q", m)
	}
	if s := freezeStatus(t, c); s != "thawed" {
		t.Fatalf("status before the freeze: %q", s)
	}

	// The writer, started while thawed: guest-exec is refused once frozen.
	var writer struct {
		PID int `json:"pid"`
	}
	qga(t, c, "guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", writerScript}}, &writer)
	before := vm.waitWriter(t, 2, 20*time.Second)

	var n int
	frozeAt := time.Now()
	qga(t, c, "guest-fsfreeze-freeze-list", map[string]any{"mountpoints": []string{"/mnt/data"}}, &n)
	t.Logf("guest-fsfreeze-freeze-list [/mnt/data] = %d in %s (writer had %d writes)", n, time.Since(frozeAt).Round(time.Millisecond), before)
	if n != 1 {
		t.Fatalf("guest-fsfreeze-freeze-list [/mnt/data] froze %d filesystems, want 1", n)
	}
	if s := freezeStatus(t, c); s != "frozen" {
		t.Fatalf("status after the freeze: %q", s)
	}
	// While frozen the agent refuses what could write (qemu-ga's rule), and
	// still answers its core commands.
	for _, cmd := range []struct {
		name string
		args any
	}{
		{"guest-exec", map[string]any{"path": "/bin/true"}},
		{"guest-file-open", map[string]any{"path": "/mnt/data/x", "mode": "w"}},
		{"guest-fsfreeze-freeze", nil},
	} {
		r := qga(t, c, cmd.name, cmd.args, nil)
		want := "Command " + cmd.name + " has been disabled: the agent is in frozen state"
		if r.Error == nil || r.Error.Class != "CommandNotFound" || r.Error.Desc != want {
			t.Fatalf("%s while frozen: %+v, want CommandNotFound %q", cmd.name, r.Error, want)
		}
	}
	qga(t, c, "guest-ping", nil, &struct{}{})

	// A write that had started may still land right after the freeze
	// returned; after that, none for as long as the freeze lasts.
	time.Sleep(500 * time.Millisecond)
	atFreeze := vm.writerLines()
	time.Sleep(3 * time.Second)
	stillFrozen := vm.writerLines()
	if stillFrozen != atFreeze {
		t.Fatalf("%d writes to /mnt/data completed while it was frozen", stillFrozen-atFreeze)
	}
	if s := freezeStatus(t, c); s != "frozen" {
		t.Fatalf("status 3 s into the freeze: %q", s)
	}

	thawAt := time.Now()
	qga(t, c, "guest-fsfreeze-thaw", nil, &n)
	if n != 1 {
		t.Fatalf("guest-fsfreeze-thaw thawed %d filesystems, want 1", n)
	}
	after := vm.waitWriter(t, stillFrozen, 10*time.Second)
	t.Logf("frozen for %s: %d writes before the freeze, %d once it settled, still %d after 3 s frozen; the blocked write completed %s after the thaw was sent (%d writes by then)",
		thawAt.Sub(frozeAt).Round(time.Millisecond), before, atFreeze, stillFrozen, time.Since(thawAt).Round(time.Millisecond), after)
	if s := freezeStatus(t, c); s != "thawed" {
		t.Fatalf("status after the thaw: %q", s)
	}

	// A write through the agent lands too, and reads back.
	var h int
	qga(t, c, "guest-file-open", map[string]any{"path": "/mnt/data/x", "mode": "w"}, &h)
	var w struct {
		Count int `json:"count"`
	}
	qga(t, c, "guest-file-write", map[string]any{"handle": h, "buf-b64": "dGhhd2VkCg=="}, &w)
	qga(t, c, "guest-file-close", map[string]any{"handle": h}, &struct{}{})
	if w.Count != 7 {
		t.Fatalf("guest-file-write after the thaw wrote %d bytes", w.Count)
	}
	if got := guestSh(t, c, "sync; cat /mnt/data/x; cat /mnt/data/seq"); !strings.HasPrefix(got, "thawed\n") {
		t.Fatalf("/mnt/data/x after the thaw: %q", got)
	}

	// The writer stops on a flag in /tmp (tmpfs) and exits cleanly: none of
	// its writes failed.
	qga(t, c, "guest-file-open", map[string]any{"path": "/tmp/stop", "mode": "w"}, &h)
	qga(t, c, "guest-file-close", map[string]any{"handle": h}, &struct{}{})
	if st := waitExec(t, c, writer.PID, 20*time.Second); st.ExitCode == nil || *st.ExitCode != 0 {
		t.Fatalf("writer loop: %+v", st)
	}

	// The plain freeze: /mnt/data is the one block-device mount in the VM
	// (the root is the initramfs), so it freezes exactly that.
	qga(t, c, "guest-fsfreeze-freeze", nil, &n)
	if n != 1 {
		t.Fatalf("guest-fsfreeze-freeze froze %d filesystems, want 1", n)
	}
	if s := freezeStatus(t, c); s != "frozen" {
		t.Fatalf("status after guest-fsfreeze-freeze: %q", s)
	}
	qga(t, c, "guest-fsfreeze-thaw", nil, &n)
	if n != 1 {
		t.Fatalf("guest-fsfreeze-thaw after guest-fsfreeze-freeze thawed %d, want 1", n)
	}
	if got := guestSh(t, c, "echo again > /mnt/data/y && cat /mnt/data/y"); got != "again\n" {
		t.Fatalf("write after the second thaw: %q", got)
	}
}

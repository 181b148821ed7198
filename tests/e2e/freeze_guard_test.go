package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// callWithin sends one request and fails the test if its reply does not come
// within d: a freeze that blocks the agent must fail the test, not hang it.
func callWithin(t *testing.T, c *harness.Conn, req string, d time.Duration) string {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatalf("%s: %v", req, err)
	}
	line, err := c.R.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: no reply within %s: %v", req, d, err)
	}
	return line
}

func freezeList(t *testing.T, c *harness.Conn, mnt string) int {
	t.Helper()
	var n int
	decodeReturn(t, callWithin(t, c, fmt.Sprintf(`{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[%q]}}`+"\n", mnt), 15*time.Second), &n)
	return n
}

func freezeStatusOf(t *testing.T, socket string) string {
	t.Helper()
	c := harness.MustDial(t, socket)
	defer c.Close()
	var status string
	decodeReturn(t, callWithin(t, c, `{"execute":"guest-fsfreeze-status"}`+"\n", 10*time.Second), &status)
	return status
}

// guestInfoEnabled maps each command guest-info lists to its "enabled".
func guestInfoEnabled(t *testing.T, c *harness.Conn) map[string]bool {
	t.Helper()
	var info struct {
		Commands []struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
		} `json:"supported_commands"`
	}
	decodeReturn(t, callWithin(t, c, `{"execute":"guest-info"}`+"\n", 10*time.Second), &info)
	out := map[string]bool{}
	for _, cmd := range info.Commands {
		out[cmd.Name] = cmd.Enabled
	}
	return out
}

// writeBlocks tells whether a write into dir is held up (the filesystem is
// frozen); a write that was held completes once it is thawed.
func writeBlocks(t *testing.T, dir string) bool {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- os.WriteFile(filepath.Join(dir, "probe"), []byte("x"), 0o600) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write into %s: %v", dir, err)
		}
		return false
	case <-time.After(300 * time.Millisecond):
		return true
	}
}

// The agent installed the usual way keeps its state directory on the root
// filesystem, which libvirt's domfsfreeze freezes. Here the state directory
// lies on the filesystem being frozen: the freeze must return, the agent
// must keep serving (also a parser and a cmd-system restarted while frozen),
// guest-info must list what is refused as disabled, and the thaw must work.
func TestFreezeWithStateDirOnFrozenFS(t *testing.T) {
	mnt := harness.LoopFS(t)
	state := filepath.Join(mnt, "state")
	a := harness.StartAgent(t, harness.Options{PluginDir: pluginDir, StateDir: state})
	c := harness.MustDial(t, a.Socket)
	// Something of every kind of plugin state first: a file handle.
	decodeReturn(t, call(t, c, `{"execute":"guest-file-open","arguments":{"path":"/etc/hostname"}}`+"\n"), new(int64))

	if n := freezeList(t, c, mnt); n != 1 {
		t.Fatalf("froze %d filesystems, want 1", n)
	}
	if !writeBlocks(t, mnt) {
		t.Fatal("the filesystem is not frozen")
	}
	enabled := guestInfoEnabled(t, c)
	for name, want := range map[string]bool{
		"guest-ping": true, "guest-sync-delimited": true, "guest-info": true,
		"guest-fsfreeze-status": true, "guest-fsfreeze-thaw": true,
		"guest-file-open": false, "guest-get-time": false, "guest-exec": false, "guest-fsfreeze-freeze": false,
	} {
		if got, ok := enabled[name]; !ok || got != want {
			t.Errorf("guest-info while frozen: %s enabled=%v (listed %v), want %v", name, got, ok, want)
		}
	}
	expectError(t, callWithin(t, c, `{"execute":"guest-get-time"}`+"\n", 10*time.Second),
		"CommandNotFound", "Command guest-get-time has been disabled: the agent is in frozen state")

	// Plugins restarted while frozen find all they need off the frozen
	// filesystem.
	killAndReap(t, onePluginProc(t, a.Cmd.Process.Pid, "parser-json"))
	harness.WaitForPing(t, a.Socket, 10*time.Second)
	killAndReap(t, onePluginProc(t, a.Cmd.Process.Pid, "cmd-system"))
	if got := freezeStatusOf(t, a.Socket); got != "frozen" {
		t.Fatalf("status after the restarts: %q", got)
	}
	c = harness.MustDial(t, a.Socket)
	expectError(t, callWithin(t, c, `{"execute":"guest-file-open","arguments":{"path":"/etc/hostname"}}`+"\n", 10*time.Second),
		"CommandNotFound", "Command guest-file-open has been disabled: the agent is in frozen state")
	var n int
	decodeReturn(t, callWithin(t, c, `{"execute":"guest-fsfreeze-thaw"}`+"\n", 15*time.Second), &n)
	if n != 1 {
		t.Fatalf("thawed %d filesystems, want 1", n)
	}
	if writeBlocks(t, mnt) {
		t.Fatal("still frozen after the thaw")
	}
	if enabled := guestInfoEnabled(t, c); !enabled["guest-file-open"] {
		t.Fatal("guest-file-open still disabled after the thaw")
	}
}

// A reboot thaws every filesystem and empties /run: the agent that starts
// afterwards with the same state directory must not believe the guest is
// frozen (libvirt's domtime failed after a reset).
func TestFrozenFlagDoesNotSurviveReboot(t *testing.T) {
	mnt := harness.LoopFS(t)
	dir := harness.ShortTempDir(t)
	state := filepath.Join(dir, "state")
	a := harness.StartAgent(t, harness.Options{PluginDir: pluginDir, StateDir: state, RuntimeDir: filepath.Join(dir, "run-boot1")})
	c := harness.MustDial(t, a.Socket)
	if n := freezeList(t, c, mnt); n != 1 {
		t.Fatalf("froze %d filesystems, want 1", n)
	}
	// The guest is reset: the agent dies with it, the kernel's freeze is
	// gone after the boot, /run is a new tmpfs.
	_ = a.Cmd.Process.Kill()
	_ = a.Cmd.Wait()
	if out, err := exec.Command("fsfreeze", "--unfreeze", mnt).CombinedOutput(); err != nil {
		t.Fatalf("unfreeze: %v: %s", err, out)
	}
	a = harness.StartAgent(t, harness.Options{PluginDir: pluginDir, StateDir: state, RuntimeDir: filepath.Join(dir, "run-boot2")})
	if got := freezeStatusOf(t, a.Socket); got != "thawed" {
		t.Fatalf("status after the reboot: %q", got)
	}
	c = harness.MustDial(t, a.Socket)
	r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-get-time"}`+"\n"))
	if r.Error != nil {
		t.Fatalf("guest-get-time after the reboot: %s %s", r.Error.Class, r.Error.Desc)
	}
}

// A host that froze the guest and went away must not leave it frozen for
// ever: past limits.fsfreeze_max the agent thaws on its own and says why.
func TestFreezeDeadlineThaws(t *testing.T) {
	mnt := harness.LoopFS(t)
	a, sock := startAgentConfig(t, `limits { fsfreeze_max = "2s" }`)
	c := harness.MustDial(t, sock)
	start := time.Now()
	if n := freezeList(t, c, mnt); n != 1 {
		t.Fatalf("froze %d filesystems, want 1", n)
	}
	c.Close()
	if !writeBlocks(t, mnt) {
		t.Fatal("the filesystem is not frozen")
	}
	deadline := time.Now().Add(15 * time.Second)
	for freezeStatusOf(t, sock) != "thawed" {
		if time.Now().After(deadline) {
			t.Fatalf("still frozen %s after a freeze with fsfreeze_max = 2s", time.Since(start).Round(time.Second))
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(start)
	if took < 2*time.Second {
		t.Fatalf("thawed after %s, before the 2 s deadline", took)
	}
	if writeBlocks(t, mnt) {
		t.Fatal("status says thawed but writes still block")
	}
	t.Logf("thawed on its own %s after the freeze", took.Round(10*time.Millisecond))
	waitLog(t, a, "freeze outlived fsfreeze_max", "the log does not say why the guest was thawed")
	// Not frozen any more for the parser either.
	c = harness.MustDial(t, sock)
	decodeReturn(t, call(t, c, `{"execute":"guest-file-open","arguments":{"path":"/etc/hostname"}}`+"\n"), new(int64))
}

// thaw_on_disconnect: the host that froze the guest through the channel
// goes away, the guest is thawed; without it (the default, as qemu-ga) the
// freeze stays for whoever comes next.
func TestThawOnDisconnect(t *testing.T) {
	for _, thaw := range []bool{true, false} {
		t.Run(fmt.Sprintf("thaw_on_disconnect=%v", thaw), func(t *testing.T) {
			mnt := harness.LoopFS(t)
			sock := harness.ShortTempDir(t) + "/qga.sock"
			harness.StartAgent(t, harness.Options{PluginDir: pluginDir, Config: fmt.Sprintf(`
channel "qga" {
  method             = "unix-listen"
  path               = %q
  dialect            = "qga"
  thaw_on_disconnect = %v
}
`, sock, thaw)})
			harness.WaitForPing(t, sock, 10*time.Second)
			c := harness.MustDial(t, sock)
			if n := freezeList(t, c, mnt); n != 1 {
				t.Fatalf("froze %d filesystems, want 1", n)
			}
			// Another session comes and goes: not the one that froze.
			other := harness.MustDial(t, sock)
			call(t, other, `{"execute":"guest-ping"}`+"\n")
			other.Close()
			time.Sleep(300 * time.Millisecond)
			if got := freezeStatusOf(t, sock); got != "frozen" {
				t.Fatalf("another session's end changed the state: %q", got)
			}
			c.Close()
			want := "frozen"
			if thaw {
				want = "thawed"
			} else {
				time.Sleep(time.Second) // time for a wrong thaw to happen
			}
			deadline := time.Now().Add(5 * time.Second)
			got := freezeStatusOf(t, sock)
			for got != want && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				got = freezeStatusOf(t, sock)
			}
			if got != want {
				t.Fatalf("after the freezing host disconnected: %q, want %q", got, want)
			}
			if writeBlocks(t, mnt) != (want == "frozen") {
				t.Fatalf("the kernel's state does not match %q", want)
			}
		})
	}
}

// waitLog waits for text in the agent's log: a plugin's lines reach the
// supervisor's log through go-plugin a moment after they are written.
func waitLog(t *testing.T, a *harness.Agent, text, why string) {
	t.Helper()
	for end := time.Now().Add(3 * time.Second); !strings.Contains(a.Log.String(), text); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s:\n%s", why, a.Log.String())
		}
	}
}

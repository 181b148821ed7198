package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// The guest frozen, then the parser killed, then the whole agent killed and
// started again (same boot: same runtime directory): each time the commands
// that are not allowed while frozen stay refused, as with a qemu-ga
// restarted after a crash, until guest-fsfreeze-thaw.
func TestFrozenStateSurvivesRestarts(t *testing.T) {
	mnt := harness.LoopFS(t)
	dir := harness.ShortTempDir(t)
	state, runtime := filepath.Join(dir, "state"), filepath.Join(dir, "run")
	a := harness.StartAgent(t, harness.Options{PluginDir: pluginDir, StateDir: state, RuntimeDir: runtime})
	c := harness.MustDial(t, a.Socket)
	var n int
	decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[%q]}}`, mnt)), &n)
	if n != 1 {
		t.Fatalf("froze %d filesystems, want 1", n)
	}
	t.Cleanup(func() { _ = exec.Command("fsfreeze", "--unfreeze", mnt).Run() })
	open := fmt.Sprintf(`{"execute":"guest-file-open","arguments":{"path":%q,"mode":"r"}}`, "/etc/hostname")
	refused := "Command guest-file-open has been disabled: the agent is in frozen state"
	expectError(t, call(t, c, open), "CommandNotFound", refused)

	killAndReap(t, onePluginProc(t, a.Cmd.Process.Pid, "parser-json"))
	harness.WaitForPing(t, a.Socket, 10*time.Second)
	c = harness.MustDial(t, a.Socket)
	expectError(t, call(t, c, open), "CommandNotFound", refused)

	_ = a.Cmd.Process.Kill() // the plugins follow it (parent-death signal)
	_ = a.Cmd.Wait()
	a = harness.StartAgent(t, harness.Options{PluginDir: pluginDir, StateDir: state, RuntimeDir: runtime})
	c = harness.MustDial(t, a.Socket)
	expectError(t, call(t, c, open), "CommandNotFound", refused)
	var status string
	decodeReturn(t, call(t, c, `{"execute":"guest-fsfreeze-status"}`), &status)
	if status != "frozen" {
		t.Fatalf("status after the restart: %q", status)
	}
	decodeReturn(t, call(t, c, `{"execute":"guest-fsfreeze-thaw"}`), &n)
	if n != 1 {
		t.Fatalf("thawed %d filesystems, want 1", n)
	}
	var h int64
	decodeReturn(t, call(t, c, open), &h)
}

// An agent stopped cleanly while the guest is frozen thaws it first, as
// qemu-ga does on exit: nobody could ask a stopped agent to thaw.
func TestCleanStopThaws(t *testing.T) {
	mnt := harness.LoopFS(t)
	a := harness.StartAgent(t, harness.Options{PluginDir: pluginDir})
	c := harness.MustDial(t, a.Socket)
	if n := freezeList(t, c, mnt); n != 1 {
		t.Fatalf("froze %d filesystems, want 1", n)
	}
	if !writeBlocks(t, mnt) {
		t.Fatal("the filesystem is not frozen")
	}
	a.Stop(t)
	if writeBlocks(t, mnt) {
		t.Fatalf("still frozen after the agent stopped:\n%s", a.Log.String())
	}
	if !strings.Contains(a.Log.String(), "filesystems thawed") {
		t.Fatalf("the log does not say the agent thawed on stop:\n%s", a.Log.String())
	}
}

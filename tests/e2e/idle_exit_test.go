package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// idleExit is plugin_idle_exit in these tests: short, so that a plugin
// leaves within the test, long enough that a busy session keeps it.
const idleExit = time.Second

// pluginRunning returns the pid of the agent's child running the named
// plugin binary, or 0.
func pluginRunning(a *harness.Agent, plugin string) int {
	for _, pid := range harness.Children(a.Cmd.Process.Pid) {
		if strings.Contains(harness.Cmdline(pid), "guest-agent-"+plugin) {
			return pid
		}
	}
	return 0
}

// waitPluginGone waits for the plugin to leave on its own and returns how
// long that took after since.
func waitPluginGone(t *testing.T, a *harness.Agent, plugin string, since time.Time, within time.Duration) time.Duration {
	t.Helper()
	for {
		if pluginRunning(a, plugin) == 0 {
			return time.Since(since)
		}
		if time.Since(since) > within {
			t.Fatalf("%s still runs %s after its last command (plugin_idle_exit %s)", plugin, time.Since(since).Round(time.Millisecond), idleExit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A command plugin that has had nothing to do for plugin_idle_exit leaves,
// and its next command starts it again; one that is busy stays.
func TestPluginIdleExit(t *testing.T) {
	a, sock := startAgentConfig(t, fmt.Sprintf("plugin_idle_exit = %q", idleExit))
	c := harness.MustDial(t, sock)

	t.Run("an idle plugin leaves and comes back", func(t *testing.T) {
		first := pluginPID(t, c)
		took := waitPluginGone(t, a, "cmd-test", time.Now(), idleExit+5*time.Second)
		t.Logf("cmd-test left %s after its last command", took.Round(time.Millisecond))
		// The supervisor logs once the process is gone.
		for deadline := time.Now().Add(2 * time.Second); !strings.Contains(a.Log.String(), "plugin stopped while idle"); {
			if time.Now().After(deadline) {
				t.Fatal("no log line for the idle stop")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if strings.Contains(a.Log.String(), "plugin exited unexpectedly") {
			t.Fatal("an idle stop was taken for a crash")
		}
		second := pluginPID(t, c)
		if second == first || !harness.Alive(second) {
			t.Fatalf("next command: pid %d (was %d)", second, first)
		}
	})

	t.Run("a request in flight keeps it", func(t *testing.T) {
		// Three idle periods long: the plugin must not be released while
		// it runs.
		ms := 3 * idleExit.Milliseconds()
		r, _ := harness.Decode(t, call(t, c, fmt.Sprintf(`{"execute":"test-sleep","arguments":{"ms":%d}}`, ms)))
		if r.Error != nil {
			t.Fatalf("test-sleep across idle periods: %+v", r.Error)
		}
	})

	t.Run("an open file handle keeps cmd-files", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(path, []byte("kept"), 0o600); err != nil {
			t.Fatal(err)
		}
		r, _ := harness.Decode(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-open","arguments":{"path":%q}}`, path)))
		if r.Error != nil {
			t.Fatalf("guest-file-open: %+v", r.Error)
		}
		handle := string(r.Return)
		pid := pluginRunning(a, "cmd-files")
		// A first read with more to come leaves read-ahead runs in the
		// plugin: the idle check must keep them, and the position.
		var read struct {
			Buf string `json:"buf-b64"`
		}
		r, _ = harness.Decode(t, call(t, c, `{"execute":"guest-file-read","arguments":{"handle":`+handle+`,"count":2}}`))
		if r.Error != nil || json.Unmarshal(r.Return, &read) != nil || read.Buf != "a2U=" {
			t.Fatalf("first read: %+v %s", r.Error, r.Return)
		}
		time.Sleep(3 * idleExit)
		if now := pluginRunning(a, "cmd-files"); now != pid || pid == 0 {
			t.Fatalf("cmd-files with an open handle left (pid %d, now %d)", pid, now)
		}
		r, _ = harness.Decode(t, call(t, c, `{"execute":"guest-file-read","arguments":{"handle":`+handle+`,"count":2}}`))
		if r.Error != nil || json.Unmarshal(r.Return, &read) != nil || read.Buf != "cHQ=" {
			t.Fatalf("read on the kept handle after idle periods: %+v %s", r.Error, r.Return)
		}
		harness.Decode(t, call(t, c, `{"execute":"guest-file-close","arguments":{"handle":`+handle+`}}`))
		closed := time.Now()
		waitPluginGone(t, a, "cmd-files", closed, idleExit+5*time.Second)
	})

	t.Run("a child and its uncollected status keep cmd-exec", func(t *testing.T) {
		r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","sleep 2; exit 7"]}}`))
		var started struct {
			PID int `json:"pid"`
		}
		if r.Error != nil || json.Unmarshal(r.Return, &started) != nil {
			t.Fatalf("guest-exec: %+v %s", r.Error, r.Return)
		}
		time.Sleep(2*time.Second + 3*idleExit) // exited, status not collected
		if pluginRunning(a, "cmd-exec") == 0 {
			t.Fatal("cmd-exec left with a status not collected")
		}
		r, _ = harness.Decode(t, call(t, c, fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d}}`, started.PID)))
		if r.Error != nil || !strings.Contains(string(r.Return), `"exitcode":7`) {
			t.Fatalf("status after idle periods: %+v %s", r.Error, r.Return)
		}
		waitPluginGone(t, a, "cmd-exec", time.Now(), idleExit+5*time.Second)
	})
}

// plugin_idle_exit = "off" keeps every started plugin.
func TestPluginIdleExitOff(t *testing.T) {
	a, sock := startAgentConfig(t, `plugin_idle_exit = "off"`)
	c := harness.MustDial(t, sock)
	pid := pluginPID(t, c)
	time.Sleep(3 * time.Second)
	if pluginRunning(a, "cmd-test") != pid {
		t.Fatal("cmd-test left although plugin_idle_exit is off")
	}
}

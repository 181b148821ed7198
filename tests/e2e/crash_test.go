package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

func pluginPID(t *testing.T, c *harness.Conn) int {
	t.Helper()
	r, _ := harness.Decode(t, call(t, c, `{"execute":"test-pid"}`))
	if r.Error != nil {
		t.Fatalf("test-pid: %+v", r.Error)
	}
	var v struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(r.Return, &v); err != nil || v.PID == 0 {
		t.Fatalf("test-pid: %s", r.Return)
	}
	return v.PID
}

// A command plugin killed while it runs a request: that request gets a
// GenericError, the next one succeeds on a restarted plugin.
func TestPluginKilledMidRequest(t *testing.T) {
	a := startAgent(t)
	c := harness.MustDial(t, a.Socket)
	pid := pluginPID(t, c)

	if _, err := c.Write([]byte(`{"execute":"test-sleep","arguments":{"ms":10000},"id":"slow"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	line, err := c.ReadLine()
	if err != nil {
		t.Fatal(err)
	}
	r, _ := harness.Decode(t, line)
	if r.Error == nil || r.Error.Class != "GenericError" || string(r.ID) != `"slow"` || !strings.Contains(r.Error.Desc, "cmd-test") {
		t.Fatalf("in-flight request after SIGKILL: %q", line)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("error came %s after the kill", waited)
	}
	newPID := pluginPID(t, c)
	if newPID == pid || !harness.Alive(newPID) {
		t.Fatalf("plugin not restarted: old %d new %d", pid, newPID)
	}
	// The killed process is reaped, not a zombie.
	time.Sleep(100 * time.Millisecond)
	if harness.Alive(pid) {
		t.Fatalf("killed plugin %d still present", pid)
	}
}

// 100 kills in a row of a command plugin under a steady load of pings on
// other sessions: no ping is lost, and the agent still serves commands.
func TestHundredKillsLoseNoPing(t *testing.T) {
	// The restart backoff is capped low so the test takes seconds; its
	// growth is covered by the supervisor's unit tests.
	a, sock := startAgentConfig(t, `restart_backoff_max = "20ms"`)
	a.Socket = sock
	ctl := harness.MustDial(t, a.Socket)
	var pings, failures atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := harness.Dial(a.Socket)
			if err != nil {
				failures.Add(1)
				return
			}
			defer c.Close()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				line, err := c.Call(fmt.Sprintf(`{"execute":"guest-ping","id":%d}`+"\n", i))
				if err != nil || !strings.HasPrefix(line, `{"return": {}, "id": `+fmt.Sprint(i)+"}") {
					failures.Add(1)
					return
				}
				pings.Add(1)
				time.Sleep(200 * time.Microsecond) // steady, not saturating
			}
		}()
	}
	kills := 0
	for kills < 100 {
		pid := pluginPID(t, ctl)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		kills++
		// Wait until it is reaped, not just a zombie leader: threads of a
		// killed process may still hold its sockets while the leader shows Z.
		for j := 0; j < 200 && harness.Exists(pid); j++ {
			time.Sleep(5 * time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d ping failures during %d kills (%d pings answered)", failures.Load(), kills, pings.Load())
	}
	if pings.Load() < 100 {
		t.Fatalf("only %d pings during the kills", pings.Load())
	}
	pluginPID(t, ctl) // still serving commands
	t.Logf("%d kills, %d pings, none lost", kills, pings.Load())
	// No plugin processes piled up: the agent has its three resident
	// plugins and at most one cmd-test.
	if n := len(harness.Children(a.Cmd.Process.Pid)); n > 4 {
		t.Fatalf("agent has %d child processes after the kills", n)
	}
}

// SIGKILL of the supervisor: every plugin exits (parent-death signal and the
// SDK's pidfd watchdog), none is orphaned.
func TestNoOrphansWhenSupervisorKilled(t *testing.T) {
	a := startAgent(t)
	c := harness.MustDial(t, a.Socket)
	pluginPID(t, c) // start the lazy plugin too
	children := harness.Children(a.Cmd.Process.Pid)
	// The parser and the lazily started cmd-test; the exchange handed its
	// listener to the parser and was stopped.
	if len(children) < 2 {
		t.Fatalf("expected at least 2 plugin processes, got %v", children)
	}
	if err := a.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.Cmd.Wait()
	deadline := time.Now().Add(3 * time.Second)
	for _, pid := range children {
		for harness.Alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if harness.Alive(pid) {
			t.Errorf("plugin %d (%s) outlived the SIGKILLed supervisor", pid, harness.Cmdline(pid))
		}
	}
}

// SIGTERM: clean shutdown, plugins gone, socket directory swept at the next
// start even when a killed run left sockets behind.
func TestShutdownAndStaleSockets(t *testing.T) {
	dir := harness.ShortTempDir(t)
	runtime := filepath.Join(dir, "run")
	stale := filepath.Join(runtime, "s", "plugin-dir-stale")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "plugin123"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a := harness.StartAgent(t, harness.Options{PluginDir: pluginDir, RuntimeDir: runtime})
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale socket directory not swept: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(runtime, "s"))
	if len(entries) == 0 {
		t.Fatal("plugin sockets are not under the runtime directory")
	}
	children := harness.Children(a.Cmd.Process.Pid)
	a.Stop(t)
	if a.Cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("exit code %d after SIGTERM", a.Cmd.ProcessState.ExitCode())
	}
	for _, pid := range children {
		if harness.Alive(pid) {
			t.Errorf("plugin %d still running after a clean shutdown", pid)
		}
	}
}

// The parser killed: the supervisor restarts it, starts the exchange again to
// bind the socket anew and hand it over, and stops the exchange once more.
func TestParserKilledChannelRestored(t *testing.T) {
	a := startAgent(t)
	waitNoExchange(t, a, "the exchange should be stopped after handing over its listener")
	var parser int
	for _, pid := range harness.Children(a.Cmd.Process.Pid) {
		if strings.HasSuffix(harness.Cmdline(pid), "guest-agent-parser-json") {
			parser = pid
		}
	}
	if parser == 0 {
		t.Fatalf("no parser among %v", harness.Children(a.Cmd.Process.Pid))
	}
	c := harness.MustDial(t, a.Socket)
	call(t, c, `{"execute":"guest-ping"}`)
	if err := syscall.Kill(parser, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The session dies with the parser.
	if _, err := c.ReadLine(); err == nil {
		t.Fatal("the session should end with the parser")
	}
	harness.WaitForPing(t, a.Socket, 10*time.Second)
	for i := 0; i < 3; i++ {
		c2 := harness.MustDial(t, a.Socket)
		if r, _ := harness.Decode(t, call(t, c2, `{"execute":"test-pid"}`)); r.Error != nil {
			t.Fatalf("command after the parser restart: %+v", r.Error)
		}
	}
	waitNoExchange(t, a, "the exchange restarted for the recovery was not stopped again")
}

func waitNoExchange(t *testing.T, a *harness.Agent, why string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		exchanges := 0
		for _, pid := range harness.Children(a.Cmd.Process.Pid) {
			if strings.HasSuffix(harness.Cmdline(pid), "guest-agent-exchange-virtio") {
				exchanges++
			}
		}
		if exchanges == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

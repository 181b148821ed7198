package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// The crash tests of the foundation, extended to the real command plugins:
// SIGKILL of cmd-exec while a child of it runs, and of cmd-files while
// handles are open and while a large read is in flight.

// pluginProcs returns the agent's children running guest-agent-<name>.
func pluginProcs(agent int, name string) []int {
	var out []int
	for _, pid := range harness.Children(agent) {
		if filepath.Base(harness.Cmdline(pid)) == "guest-agent-"+name {
			out = append(out, pid)
		}
	}
	return out
}

// onePluginProc waits until exactly one live guest-agent-<name> runs under
// the agent and returns its pid.
func onePluginProc(t *testing.T, agent int, name string) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs := pluginProcs(agent, name)
		if len(procs) == 1 && harness.Alive(procs[0]) {
			return procs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("want one guest-agent-%s under the agent, have %v", name, procs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// killAndReap SIGKILLs pid and waits until it has left the process table
// (reaped by the supervisor, not a zombie).
func killAndReap(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for harness.Exists(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("killed plugin %d still in the process table 5s later (zombie of the agent?)", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// procStat returns a process's state letter and parent pid.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[0][0], ppid, true
}

// fdCount is the number of open file descriptors of pid.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("fds of %d: %v", pid, err)
	}
	return len(entries)
}

// zombieChildren lists the children of pid that are zombies.
func zombieChildren(pid int) []int {
	var out []int
	for _, c := range harness.Children(pid) {
		if st, _, ok := procStat(c); ok && st == 'Z' {
			out = append(out, c)
		}
	}
	return out
}

// pinger pings the agent on its own session every few milliseconds until
// stopped, counting answers and failures.
type pinger struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	pings    atomic.Int64
	failures atomic.Int64
	mu       sync.Mutex
	first    string
}

func startPinger(t *testing.T, socket string) *pinger {
	t.Helper()
	c, err := harness.Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	p := &pinger{stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer c.Close()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			default:
			}
			line, err := c.Call(fmt.Sprintf(`{"execute":"guest-ping","id":%d}`+"\n", i))
			if err != nil || !strings.HasPrefix(line, fmt.Sprintf(`{"return": {}, "id": %d}`, i)) {
				p.failures.Add(1)
				p.mu.Lock()
				if p.first == "" {
					p.first = fmt.Sprintf("ping %d: %q %v", i, line, err)
				}
				p.mu.Unlock()
				if err != nil {
					return // the session is gone; the failure is counted
				}
				continue
			}
			p.pings.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return p
}

// finish stops the pinger and fails the test if any ping went unanswered.
func (p *pinger) finish(t *testing.T) {
	t.Helper()
	close(p.stop)
	p.wg.Wait()
	if n := p.failures.Load(); n != 0 {
		t.Fatalf("%d pings failed while plugins were killed (%d answered); first: %s", n, p.pings.Load(), p.first)
	}
	if p.pings.Load() < 10 {
		t.Fatalf("only %d pings answered during the test", p.pings.Load())
	}
	t.Logf("%d pings answered during the kills, none lost", p.pings.Load())
}

// becomeSubreaper makes the test process the child subreaper of everything
// it starts, for the duration of t: an orphan of a killed plugin is then
// reparented to the test, which can check where it went and reap it, instead
// of to PID 1 (which, in some sandboxes, never reaps).
func becomeSubreaper(t *testing.T) {
	t.Helper()
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		t.Skipf("PR_SET_CHILD_SUBREAPER: %v", errno)
	}
	t.Cleanup(func() { _, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0) })
}

func decodeReturn(t *testing.T, line string, v any) {
	t.Helper()
	r, _ := harness.Decode(t, line)
	if r.Error != nil {
		t.Fatalf("unexpected error %s: %s", r.Error.Class, r.Error.Desc)
	}
	if err := json.Unmarshal(r.Return, v); err != nil {
		t.Fatalf("reply %q: %v", line, err)
	}
}

// SIGKILL of cmd-exec while a child it started runs: the child's record is
// gone with the plugin (a clear error, as after a qemu-ga restart), the next
// guest-exec runs on a restarted plugin, the orphan is reparented away from
// the agent and never becomes the agent's zombie, no plugin process piles
// up, and pings are answered throughout.
func TestCmdExecKilledWithRunningChild(t *testing.T) {
	becomeSubreaper(t)
	a := startAgent(t)
	agent := a.Cmd.Process.Pid
	c := harness.MustDial(t, a.Socket)
	p := startPinger(t, a.Socket)

	var started struct {
		PID int `json:"pid"`
	}
	decodeReturn(t, call(t, c, `{"execute":"guest-exec","arguments":{"path":"/bin/sleep","arg":["30"],"capture-output":true}}`), &started)
	child := started.PID
	t.Cleanup(func() {
		// Whatever happened, the sleep does not outlive the test; as its
		// subreaper the test reaps it.
		if harness.Exists(child) {
			_ = syscall.Kill(child, syscall.SIGKILL)
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(child, &ws, 0, nil)
		}
	})
	execPID := onePluginProc(t, agent, "cmd-exec")
	if _, ppid, ok := procStat(child); !ok || ppid != execPID {
		t.Fatalf("sleep %d: parent %d, want cmd-exec %d", child, ppid, execPID)
	}
	// The status while the plugin lives: running.
	var st struct {
		Exited bool `json:"exited"`
	}
	decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d}}`, child)), &st)
	if st.Exited {
		t.Fatal("sleep 30 reported exited")
	}

	killAndReap(t, execPID)

	// The orphan: still running, reparented to the nearest subreaper (the
	// test here; init in a guest), never the agent's child or zombie.
	deadline := time.Now().Add(2 * time.Second)
	for {
		state, ppid, ok := procStat(child)
		if !ok {
			t.Fatalf("sleep %d vanished with cmd-exec (kill_on_exit is off by default)", child)
		}
		if ppid != execPID {
			if ppid != os.Getpid() {
				t.Fatalf("orphaned sleep %d reparented to %d (%s), want the test process %d (its subreaper)", child, ppid, harness.Cmdline(ppid), os.Getpid())
			}
			if state == 'Z' {
				t.Fatalf("orphaned sleep %d is a zombie", child)
			}
			t.Logf("orphaned sleep %d reparented from cmd-exec %d to %d (subreaper), state %c", child, execPID, ppid, state)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep %d still has the killed cmd-exec %d as parent", child, execPID)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The record died with the plugin: qemu-ga's error for an unknown pid,
	// as after a qemu-ga restart (plugins/cmd-exec/README.md).
	line := call(t, c, fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d}}`, child))
	expectError(t, line, "GenericError", "Invalid parameter 'pid'")
	t.Logf("guest-exec-status of the orphan after the kill: %s", strings.TrimSpace(line))

	// A new guest-exec runs on a restarted plugin, output and all.
	decodeReturn(t, call(t, c, `{"execute":"guest-exec","arguments":{"path":"/bin/echo","arg":["after the kill"],"capture-output":true}}`), &started)
	var done struct {
		Exited   bool   `json:"exited"`
		ExitCode *int   `json:"exitcode"`
		Out      string `json:"out-data"`
	}
	for i := 0; ; i++ {
		decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d}}`, started.PID)), &done)
		if done.Exited {
			break
		}
		if i > 500 {
			t.Fatal("echo never exited")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if done.ExitCode == nil || *done.ExitCode != 0 || done.Out != "YWZ0ZXIgdGhlIGtpbGwK" {
		t.Fatalf("guest-exec after the restart: %+v", done)
	}
	newExec := onePluginProc(t, agent, "cmd-exec")
	if newExec == execPID {
		t.Fatal("cmd-exec was not restarted")
	}

	// No leaks: one cmd-exec, no zombie of the agent, the orphan elsewhere.
	if z := zombieChildren(agent); len(z) != 0 {
		t.Fatalf("zombie children of the agent: %v", z)
	}
	for _, pid := range harness.Children(agent) {
		if pid == child {
			t.Fatalf("the orphaned sleep %d is a child of the agent", pid)
		}
	}
	if z := zombieChildren(newExec); len(z) != 0 {
		t.Fatalf("zombie children of the new cmd-exec: %v", z)
	}
	if n := len(pluginProcs(agent, "cmd-exec")); n != 1 {
		t.Fatalf("%d cmd-exec processes under the agent", n)
	}
	p.finish(t)

	// The orphan is ours to end and reap.
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatalf("kill orphaned sleep: %v", err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(child, &ws, 0, nil); err != nil || !ws.Signaled() {
		t.Fatalf("reap orphaned sleep: %v %v", err, ws)
	}
	if harness.Exists(child) {
		t.Fatalf("sleep %d still present after being reaped", child)
	}
}

func openHandle(t *testing.T, c *harness.Conn, path, mode string) int64 {
	t.Helper()
	var h int64
	decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-open","arguments":{"path":%q,"mode":%q}}`, path, mode)), &h)
	return h
}

// SIGKILL of cmd-files with handles open, ten times: each stale handle gets
// qemu-ga's "not found" error, new handles keep counting up from the
// persisted counter, the killed process's descriptors are gone (the open
// descriptors of the supervisor, the parser and each new cmd-files stay
// flat), no plugin process piles up, and pings are answered throughout.
func TestCmdFilesKilledWithOpenHandles(t *testing.T) {
	// The restart backoff is capped low so ten kills take a second; its
	// growth is covered by the supervisor's unit tests.
	a, sock := startAgentConfig(t, `restart_backoff_max = "20ms"`)
	agent := a.Cmd.Process.Pid
	c := harness.MustDial(t, sock)
	p := startPinger(t, sock)
	dir := t.TempDir()

	parser := onePluginProc(t, agent, "parser-json")
	var maxHandle int64
	var firstFDs [3]int
	children := -1
	for round := 0; round < 10; round++ {
		var handles []int64
		for i := 0; i < 5; i++ {
			path := filepath.Join(dir, fmt.Sprintf("r%d-f%d", round, i))
			h := openHandle(t, c, path, "w+")
			if h <= maxHandle {
				t.Fatalf("round %d: new handle %d not above every earlier one (%d)", round, h, maxHandle)
			}
			maxHandle = h
			handles = append(handles, h)
			// Something written through the handle: the file is in use.
			line := call(t, c, fmt.Sprintf(`{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":"aGVsbG8K"}}`, h))
			if r, _ := harness.Decode(t, line); r.Error != nil {
				t.Fatalf("write: %q", line)
			}
		}
		files := onePluginProc(t, agent, "cmd-files")
		if round == 0 {
			firstFDs = [3]int{fdCount(t, files), fdCount(t, agent), fdCount(t, parser)}
			children = len(harness.Children(agent))
			t.Logf("with 5 handles open: cmd-files %d fds, supervisor %d, parser %d; %d plugin processes",
				firstFDs[0], firstFDs[1], firstFDs[2], children)
		} else {
			// Not above round 0 once settled (a descriptor of the old
			// connection may take a moment to go).
			for settle := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				fds := [3]int{fdCount(t, files), fdCount(t, agent), fdCount(t, parser)}
				n := len(harness.Children(agent))
				if fds[0] <= firstFDs[0] && fds[1] <= firstFDs[1] && fds[2] <= firstFDs[2] && n <= children {
					break
				}
				if time.Now().After(settle) {
					t.Fatalf("round %d: open fds (cmd-files, supervisor, parser) %v, round 0 had %v; plugin processes %d, round 0 had %d",
						round, fds, firstFDs, n, children)
				}
			}
		}

		killAndReap(t, files)

		for _, h := range handles {
			expectError(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d}}`, h)),
				"GenericError", fmt.Sprintf("handle '%d' has not been found", h))
		}
		expectError(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-close","arguments":{"handle":%d}}`, handles[0])),
			"GenericError", fmt.Sprintf("handle '%d' has not been found", handles[0]))
		if procs := pluginProcs(agent, "cmd-files"); len(procs) != 1 || procs[0] == files {
			t.Fatalf("round %d: cmd-files processes after the kill %v (killed %d)", round, procs, files)
		}
	}
	// The files written through the killed handles are intact.
	b, err := os.ReadFile(filepath.Join(dir, "r9-f4"))
	if err != nil || string(b) != "hello\n" {
		t.Fatalf("file written before the kill: %q %v", b, err)
	}
	if z := zombieChildren(agent); len(z) != 0 {
		t.Fatalf("zombie children of the agent: %v", z)
	}
	p.finish(t)
}

// procIO returns the bytes a process has read and written through
// syscalls so far (rchar, wchar of /proc/<pid>/io).
func procIO(pid int) (rchar, wchar int64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "rchar":
			rchar = n
		case "wchar":
			wchar = n
		}
	}
	return rchar, wchar, true
}

// SIGKILL of cmd-files while it answers a 40 MiB guest-file-read: that
// request gets a GenericError that says what happened, the next one
// succeeds. The kill lands while the reply is on its way: cmd-files has
// read the whole file (rchar) and not yet written all of the reply to the
// parser (wchar), watched through /proc/<pid>/io.
func TestCmdFilesKilledMidRead(t *testing.T) {
	const size = 40 << 20
	a := startAgent(t)
	agent := a.Cmd.Process.Pid
	c := harness.MustDial(t, a.Socket)
	p := startPinger(t, a.Socket)
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, []byte(strings.Repeat("0123456789abcdef", size/16)), 0o600); err != nil {
		t.Fatal(err)
	}
	var rd struct {
		Count int  `json:"count"`
		EOF   bool `json:"eof"`
	}

	var h int64
	var killed time.Time
	var read, sent int64
	for attempt := 1; killed.IsZero(); attempt++ {
		if attempt > 20 {
			t.Fatal("20 attempts never caught cmd-files between reading the file and sending the whole reply")
		}
		h = openHandle(t, c, path, "r")
		files := onePluginProc(t, agent, "cmd-files")
		r0, w0, ok := procIO(files)
		if !ok {
			t.Fatalf("/proc/%d/io unreadable", files)
		}
		if _, err := c.Write([]byte(fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d},"id":"big"}`+"\n", h, size))); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			r, w, ok := procIO(files)
			if !ok {
				t.Fatalf("cmd-files %d went away by itself", files)
			}
			if r-r0 >= size && w-w0 < size {
				if err := syscall.Kill(files, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				killed, read, sent = time.Now(), r-r0, w-w0
				killAndReap(t, files)
				break
			}
			if w-w0 >= size {
				break // missed: the reply is out; take it and try again
			}
		}
		if killed.IsZero() {
			line, err := c.ReadLine() // the reply of the read just sent
			if err != nil {
				t.Fatal(err)
			}
			decodeReturn(t, line, &rd)
			if rd.Count != size {
				t.Fatalf("undisturbed read: %d bytes", rd.Count)
			}
			t.Logf("attempt %d: the reply was out before the poll saw the file read", attempt)
		}
	}
	line, err := c.ReadLine()
	if err != nil {
		t.Fatalf("no reply to the read in flight: %v", err)
	}
	r, _ := harness.Decode(t, line)
	if r.Error == nil || string(r.ID) != `"big"` {
		if len(line) > 200 {
			line = line[:200] + "..."
		}
		t.Fatalf("read in flight at the kill: want an error with its id, got %q", line)
	}
	t.Logf("killed with the file read (%d MiB) and %.1f MiB of the reply sent: %s %q, %s after the kill",
		read>>20, float64(sent)/(1<<20), r.Error.Class, r.Error.Desc, time.Since(killed).Round(time.Millisecond))
	const want = "command guest-file-read failed: plugin cmd-files exited while running the command; it is being restarted"
	if r.Error.Class != "GenericError" || r.Error.Desc != want {
		t.Fatalf("read in flight at the kill: %s %q, want GenericError %q", r.Error.Class, r.Error.Desc, want)
	}
	// Its handle died with the plugin.
	expectError(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d}}`, h)),
		"GenericError", fmt.Sprintf("handle '%d' has not been found", h))

	// The next request succeeds on the restarted plugin.
	h = openHandle(t, c, path, "r")
	decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d}}`, h, size)), &rd)
	if rd.Count != size {
		t.Fatalf("read after the kill: %d bytes", rd.Count)
	}
	if n := len(pluginProcs(agent, "cmd-files")); n != 1 {
		t.Fatalf("%d cmd-files processes", n)
	}
	p.finish(t)
}

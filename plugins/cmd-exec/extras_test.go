package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// Tests of guest-exec's arguments beyond qemu-ga and of guest-exec-read,
// -write and -terminate, on real processes.

func TestExecTimeLimitKillsTheTree(t *testing.T) {
	a := newTestAgent(t, "")
	start := time.Now()
	// The child starts a grandchild in its group and waits for it.
	pid := a.exec(`{"path":"/bin/sh","arg":["-c","sleep 100 & echo $!; wait"],"capture-output":true,"timeout":0.5}`)
	st := a.wait(pid)
	if took := time.Since(start); took > 5*time.Second || took < 400*time.Millisecond {
		t.Fatalf("a 0.5 s limit ended the command after %s", took)
	}
	if st["signal"] != float64(9) || st["timed-out"] != true {
		t.Fatalf("status after the limit: %v", st)
	}
	var grandchild int
	if _, err := fmt.Sscan(decoded(t, st, "out-data"), &grandchild); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the grandchild to die with its group", 5*time.Second, func() bool { return !alive(grandchild) })

	// A command that ends in time says nothing of a limit.
	st = a.run(`{"path":"/bin/true","timeout":30}`)
	if _, ok := st["timed-out"]; ok || st["exitcode"] != float64(0) {
		t.Fatalf("status within the limit: %v", st)
	}
	for _, bad := range []string{`0`, `-1`, `"5"`, `1e12`} {
		if _, e := a.call("guest-exec", `{"path":"/bin/true","timeout":`+bad+`}`); e == nil {
			t.Errorf("timeout %s accepted", bad)
		}
	}
}

func TestExecCwd(t *testing.T) {
	a := newTestAgent(t, "")
	dir := t.TempDir()
	st := a.run(jsonArgs(t, map[string]any{"path": "/bin/pwd", "cwd": dir, "capture-output": true}))
	if got := decoded(t, st, "out-data"); got != dir+"\n" {
		t.Fatalf("pwd in %s: %q", dir, got)
	}
	// Without cwd: "/" as before.
	if got := decoded(t, a.run(`{"path":"/bin/pwd","capture-output":true}`), "out-data"); got != "/\n" {
		t.Fatalf("pwd without cwd: %q", got)
	}
	for _, c := range []struct{ cwd, want string }{
		{"relative", "Parameter 'cwd' must be an absolute path"},
		{dir + "/none", "guest-exec: working directory '" + dir + "/none': no such file or directory"},
		{"/etc/passwd", "guest-exec: working directory '/etc/passwd' is not a directory"},
	} {
		_, e := a.call("guest-exec", jsonArgs(t, map[string]any{"path": "/bin/pwd", "cwd": c.cwd}))
		if e == nil || e.Desc != c.want {
			t.Errorf("cwd %q: %v, want %q", c.cwd, e, c.want)
		}
	}
}

func TestExecUserAndGroup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("running as another user needs root")
	}
	a := newTestAgent(t, "")
	st := a.run(`{"path":"/bin/sh","arg":["-c","id -u; id -g; echo $HOME $USER"],"user":"nobody","capture-output":true}`)
	if got := decoded(t, st, "out-data"); got != "65534\n65534\n/nonexistent nobody\n" {
		t.Fatalf("as nobody: %q", got)
	}
	st = a.run(`{"path":"/bin/sh","arg":["-c","id -u; id -g"],"user":"65534","group":"root","capture-output":true}`)
	if got := decoded(t, st, "out-data"); got != "65534\n0\n" {
		t.Fatalf("as 65534 in group root: %q", got)
	}
	// The user's rights apply from the start: nobody cannot enter /root.
	if err := os.MkdirAll("/root", 0o700); err == nil {
		_, e := a.call("guest-exec", `{"path":"/bin/true","user":"nobody","cwd":"/root"}`)
		if e == nil || !strings.Contains(e.Desc, "Permission denied") {
			t.Fatalf("nobody in /root: %v", e)
		}
	}
	for _, c := range []struct{ args, want string }{
		{`"user":"no-such-user"`, "guest-exec: no user 'no-such-user' in the guest"},
		{`"group":"no-such-group"`, "guest-exec: no group 'no-such-group' in the guest"},
		{`"user":""`, "Parameter 'user' must not be empty"},
	} {
		_, e := a.call("guest-exec", `{"path":"/bin/true",`+c.args+`}`)
		if e == nil || e.Desc != c.want {
			t.Errorf("%s: %v, want %q", c.args, e, c.want)
		}
	}

	// allowed_users confines it, and allowed_paths still applies to a
	// program run as another user.
	a = newTestAgent(t, `{"allowed_users":["daemon"],"allowed_paths":["/usr/bin/id"]}`)
	if _, e := a.call("guest-exec", `{"path":"/usr/bin/id","user":"nobody"}`); e == nil ||
		e.Desc != "guest-exec of '/usr/bin/id' refused: user 'nobody' is not in the allowed_users of cmd-exec" {
		t.Fatalf("nobody not allowed: %v", e)
	}
	if _, e := a.call("guest-exec", `{"path":"/bin/sh","user":"daemon"}`); e == nil || !strings.Contains(e.Desc, "not in the allowed_paths") {
		t.Fatalf("sh as daemon: %v", e)
	}
	st = a.run(`{"path":"/usr/bin/id","arg":["-un"],"user":"daemon","capture-output":true}`)
	if got := decoded(t, st, "out-data"); got != "daemon\n" {
		t.Fatalf("confined id as daemon: %q %v", got, st)
	}
}

func TestExecTerminate(t *testing.T) {
	a := newTestAgent(t, "")
	pid := a.exec(`{"path":"/bin/sleep","arg":["100"]}`)
	if out := a.mustCall("guest-exec-terminate", fmt.Sprintf(`{"pid":%d}`, pid)); len(out) != 0 {
		t.Fatalf("terminate returned %v", out)
	}
	if st := a.wait(pid); st["signal"] != float64(15) {
		t.Fatalf("after terminate: %v", st)
	}
	// By name, to the whole group: the grandchild dies too.
	pid = a.exec(`{"path":"/bin/sh","arg":["-c","trap '' TERM; sleep 100 & echo $!; wait"],"capture-output":true}`)
	var grandchild int
	waitFor(t, "the grandchild's pid", 5*time.Second, func() bool {
		st := a.mustCall("guest-exec-read", fmt.Sprintf(`{"pid":%d,"wait":1}`, pid))
		if s, ok := st["out-data"].(string); ok {
			_, err := fmt.Sscan(decoded(t, map[string]any{"d": s}, "d"), &grandchild)
			return err == nil
		}
		return false
	})
	a.mustCall("guest-exec-terminate", fmt.Sprintf(`{"pid":%d,"signal":"KILL"}`, pid))
	if st := a.wait(pid); st["signal"] != float64(9) {
		t.Fatalf("after SIGKILL: %v", st)
	}
	waitFor(t, "the grandchild to die", 5*time.Second, func() bool { return !alive(grandchild) })

	// An exited process is left alone; an unknown pid is qemu-ga's error.
	pid = a.exec(`{"path":"/bin/true"}`)
	waitFor(t, "exit", 5*time.Second, func() bool {
		a.ex.mu.Lock()
		defer a.ex.mu.Unlock()
		return a.ex.procs[pid].finished
	})
	a.mustCall("guest-exec-terminate", fmt.Sprintf(`{"pid":%d,"signal":9}`, pid))
	if st := a.wait(pid); st["exitcode"] != float64(0) {
		t.Fatalf("exited process after terminate: %v", st)
	}
	for _, c := range []struct{ args, want string }{
		{fmt.Sprintf(`{"pid":%d}`, pid), "Invalid parameter 'pid'"},
		{`{"pid":1,"signal":"NOPE"}`, "Parameter 'signal' does not accept value 'NOPE'"},
		{`{"pid":1,"signal":0}`, "Parameter 'signal' must be a signal number from 1 to 64"},
	} {
		if _, e := a.call("guest-exec-terminate", c.args); e == nil || e.Desc != c.want {
			t.Errorf("%s: %v, want %q", c.args, e, c.want)
		}
	}
}

// readAll follows a guest-exec with guest-exec-read until exited, calling
// each with what arrived.
func readAll(t *testing.T, a *testAgent, pid int64, each func(out, err string)) map[string]any {
	t.Helper()
	var outOff, errOff float64
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		r := a.mustCall("guest-exec-read", fmt.Sprintf(`{"pid":%d,"out-offset":%d,"err-offset":%d,"wait":5}`, pid, int64(outOff), int64(errOff)))
		var o, e string
		if _, ok := r["out-data"]; ok {
			o = decoded(t, r, "out-data")
		}
		if _, ok := r["err-data"]; ok {
			e = decoded(t, r, "err-data")
		}
		if float64(len(o)) != r["out-offset"].(float64)-outOff {
			t.Fatalf("out-offset %v after %v and %d bytes", r["out-offset"], outOff, len(o))
		}
		outOff, errOff = r["out-offset"].(float64), r["err-offset"].(float64)
		each(o, e)
		if r["exited"] == true {
			return r
		}
	}
	t.Fatal("guest-exec-read never reported exited")
	return nil
}

func TestExecReadStreams(t *testing.T) {
	a := newTestAgent(t, "")
	pid := a.exec(`{"path":"/bin/sh","arg":["-c","for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.3; done; exit 3"],"capture-output":true}`)
	var out, errs strings.Builder
	sawWhileRunning := false
	final := readAll(t, a, pid, func(o, e string) {
		if strings.Contains(o, "out1") && alive(int(pid)) {
			sawWhileRunning = true
		}
		out.WriteString(o)
		errs.WriteString(e)
	})
	if !sawWhileRunning {
		t.Error("the first line arrived only after the command ended")
	}
	if out.String() != "out1\nout2\nout3\n" || errs.String() != "err1\nerr2\nerr3\n" {
		t.Fatalf("streams: %q %q", out.String(), errs.String())
	}
	if final["exitcode"] != float64(3) {
		t.Fatalf("final read: %v", final)
	}
	// The final read freed the record.
	if _, e := a.call("guest-exec-status", fmt.Sprintf(`{"pid":%d}`, pid)); e == nil {
		t.Fatal("status after the final read")
	}
}

func TestExecReadReleasesAndResumes(t *testing.T) {
	a := newTestAgent(t, `{"max_output_bytes":65536}`)
	// 1 MiB through a 64 KiB cap: a host that keeps reading loses nothing.
	pid := a.exec(`{"path":"/bin/sh","arg":["-c","head -c 1048576 /dev/zero | tr '\\0' x"],"capture-output":"stdout"}`)
	total := 0
	var final map[string]any
	var off float64
	for {
		r := a.mustCall("guest-exec-read", fmt.Sprintf(`{"pid":%d,"out-offset":%d,"max-bytes":8192,"wait":5}`, pid, int64(off)))
		if _, ok := r["out-data"]; ok {
			total += len(decoded(t, r, "out-data"))
		}
		off = r["out-offset"].(float64)
		if r["exited"] == true {
			final = r
			break
		}
		a.ex.mu.Lock()
		rec := a.ex.procs[pid]
		a.ex.mu.Unlock()
		rec.out.mu.Lock()
		held := len(rec.out.buf)
		rec.out.mu.Unlock()
		if held > 65536 {
			t.Fatalf("%d bytes held past the cap", held)
		}
	}
	// A reader of 8 KiB steps against a fast writer: flow control holds
	// the writer back, nothing is dropped.
	if total != 1<<20 || final["out-truncated"] != nil {
		t.Fatalf("%d bytes of 1 MiB, final %v", total, final)
	}

	pid = a.exec(`{"path":"/bin/echo","arg":["abc"],"capture-output":true}`)
	waitFor(t, "exit", 5*time.Second, func() bool { return isClosed(a.procDone(pid)) })
	if _, e := a.call("guest-exec-read", fmt.Sprintf(`{"pid":%d,"out-offset":10}`, pid)); e == nil || e.Desc != "Parameter 'out-offset' is past the end of the output" {
		t.Fatalf("offset past the end: %v", e)
	}
	// Offset 1 releases "a"; status returns the rest.
	r := a.mustCall("guest-exec-read", fmt.Sprintf(`{"pid":%d,"out-offset":1,"max-bytes":1}`, pid))
	if decoded(t, r, "out-data") != "b" || r["exited"] != false {
		t.Fatalf("one byte from offset 1: %v", r)
	}
	if st := a.wait(pid); decoded(t, st, "out-data") != "bc\n" {
		t.Fatalf("status after a read: %v", st)
	}
}

func (a *testAgent) procDone(pid int64) chan struct{} {
	a.ex.mu.Lock()
	defer a.ex.mu.Unlock()
	return a.ex.procs[pid].done
}

func TestExecWrite(t *testing.T) {
	a := newTestAgent(t, "")
	pid := a.exec(`{"path":"/bin/cat","capture-output":true,"input-pipe":true,"input-data":"Zmlyc3QK"}`)
	got := ""
	r := a.mustCall("guest-exec-write", fmt.Sprintf(`{"pid":%d,"input-data":"c2Vjb25kCg=="}`, pid))
	if r["count"] != float64(7) {
		t.Fatalf("write: %v", r)
	}
	// cat echoes while its input is still open.
	waitFor(t, "cat's echo", 5*time.Second, func() bool {
		r := a.mustCall("guest-exec-read", fmt.Sprintf(`{"pid":%d,"out-offset":%d,"wait":1}`, pid, len(got)))
		if _, ok := r["out-data"]; ok {
			got += decoded(t, r, "out-data")
		}
		return got == "first\nsecond\n"
	})
	a.mustCall("guest-exec-write", fmt.Sprintf(`{"pid":%d,"close":true}`, pid))
	if _, e := a.call("guest-exec-write", fmt.Sprintf(`{"pid":%d,"input-data":"eA=="}`, pid)); e == nil || !strings.Contains(e.Desc, "is closed") {
		t.Fatalf("write after close: %v", e)
	}
	if st := a.wait(pid); st["exitcode"] != float64(0) {
		t.Fatalf("cat after close: %v", st)
	}

	pid = a.exec(`{"path":"/bin/sleep","arg":["100"]}`)
	if _, e := a.call("guest-exec-write", fmt.Sprintf(`{"pid":%d,"input-data":"eA=="}`, pid)); e == nil || !strings.Contains(e.Desc, "was not started with input-pipe") {
		t.Fatalf("write without input-pipe: %v", e)
	}
	a.mustCall("guest-exec-terminate", fmt.Sprintf(`{"pid":%d}`, pid))
	a.wait(pid)
}

// TestExecReadHostGone: a host that read once and went away holds the
// command back for stream_idle, then its output is dropped past the cap
// again and the command runs to its end.
func TestExecReadHostGone(t *testing.T) {
	a := newTestAgent(t, `{"max_output_bytes":4096,"stream_idle":"300ms"}`)
	pid := a.exec(`{"path":"/bin/sh","arg":["-c","head -c 1048576 /dev/zero"],"capture-output":"stdout"}`)
	a.mustCall("guest-exec-read", fmt.Sprintf(`{"pid":%d,"wait":1}`, pid))
	start := time.Now()
	st := a.wait(pid) // guest-exec-status only: no more reads
	if took := time.Since(start); took < 250*time.Millisecond || took > 10*time.Second {
		t.Fatalf("the command ended %s after the last read, want about stream_idle", took)
	}
	if st["exitcode"] != float64(0) || st["out-truncated"] != true {
		t.Fatalf("status: %v", st)
	}
}

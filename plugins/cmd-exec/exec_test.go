package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The four exec cases of QEMU's tests/unit/test-qga.c.

func TestExec(t *testing.T) {
	a := newTestAgent(t, "")
	// A bare name is looked up in PATH (G_SPAWN_SEARCH_PATH).
	pid := a.exec(`{"path":"echo","arg":["-n","\" test_str \""],"capture-output":true}`)
	st := a.wait(pid)
	if st["exitcode"] != float64(0) {
		t.Fatalf("exitcode: %v", st)
	}
	if got := decoded(t, st, "out-data"); got != `" test_str "` || len(got) != 12 {
		t.Fatalf("out-data %q", got)
	}
	if st["out-truncated"] != false {
		t.Fatalf("out-truncated: %v", st)
	}
	if _, ok := st["err-data"]; ok {
		t.Fatalf("err-data of a silent stderr: %v", st)
	}
	// The record is gone once an exited status was returned.
	_, e := a.call("guest-exec-status", fmt.Sprintf(`{"pid":%d}`, pid))
	if e == nil || e.Class != "GenericError" || e.Desc != "Invalid parameter 'pid'" {
		t.Fatalf("second status: %v", e)
	}
}

const evenOdd = `for i in $(seq 4); do if (( $i % 2 )); then echo stdout; else echo stderr 1>&2; fi; done;`

func TestExecSeparated(t *testing.T) {
	a := newTestAgent(t, "")
	st := a.run(jsonArgs(t, map[string]any{"path": "/bin/bash", "arg": []string{"-c", evenOdd}, "capture-output": "separated"}))
	if got := decoded(t, st, "out-data"); got != "stdout\nstdout\n" {
		t.Fatalf("out-data %q", got)
	}
	if got := decoded(t, st, "err-data"); got != "stderr\nstderr\n" {
		t.Fatalf("err-data %q", got)
	}
	if st["out-truncated"] != false || st["err-truncated"] != false {
		t.Fatalf("truncation flags: %v", st)
	}
}

func TestExecMerged(t *testing.T) {
	a := newTestAgent(t, "")
	st := a.run(jsonArgs(t, map[string]any{"path": "/bin/bash", "arg": []string{"-c", evenOdd}, "capture-output": "merged"}))
	if got := decoded(t, st, "out-data"); got != "stdout\nstderr\nstdout\nstderr\n" {
		t.Fatalf("out-data %q", got)
	}
	for _, k := range []string{"err-data", "err-truncated"} {
		if _, ok := st[k]; ok {
			t.Fatalf("%s in merged mode: %v", k, st)
		}
	}
}

func TestExecInvalid(t *testing.T) {
	a := newTestAgent(t, "")
	cases := []struct{ cmd, args, desc string }{
		{"guest-exec", `{"path":"/bin/invalid-cmd42"}`, "Failed to execute child process “/bin/invalid-cmd42” (No such file or directory)"},
		{"guest-exec", `{"path":"invalid-cmd42"}`, "Failed to execute child process “invalid-cmd42” (No such file or directory)"},
		{"guest-exec", `{"path":""}`, "Failed to execute child process “” (No such file or directory)"},
		{"guest-exec", `{"path":"/etc/passwd"}`, "Failed to execute child process “/etc/passwd” (Permission denied)"},
		{"guest-exec", `{"path":"/tmp"}`, "Failed to execute child process “/tmp” (Permission denied)"},
		{"guest-exec-status", `{"pid":0}`, "Invalid parameter 'pid'"},
		{"guest-exec-status", `{"pid":-1}`, "Invalid parameter 'pid'"},
		{"guest-exec-status", `{"pid":"x"}`, "Invalid parameter type for 'pid', expected: integer"},
		{"guest-exec-status", `{}`, "Parameter 'pid' is missing"},
		{"guest-exec", `{}`, "Parameter 'path' is missing"},
		{"guest-exec", `{"path":"/bin/true","bogus":1}`, "Parameter 'bogus' is unexpected"},
		{"guest-exec", `{"path":"/bin/true","capture-output":"foo"}`, "Parameter 'capture-output' does not accept value 'foo'"},
		{"guest-exec", `{"path":"/bin/true","capture-output":1}`, "Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput"},
		{"guest-exec", `{"path":"/bin/true","arg":"x"}`, "Invalid parameter type for 'arg', expected: array"},
		{"guest-exec", `{"path":"/bin/true","arg":[1]}`, "Invalid parameter type for 'arg[0]', expected: string"},
		{"guest-exec", `{"path":"/bin/true","env":["A=1",null]}`, "Invalid parameter type for 'env[1]', expected: string"},
		{"guest-exec", `{"path":"/bin/true","input-data":"%%%"}`, "Base64 data contains invalid characters"},
	}
	for _, c := range cases {
		_, e := a.call(c.cmd, c.args)
		if e == nil || e.Class != "GenericError" || e.Desc != c.desc {
			t.Errorf("%s %s: got %v, want GenericError %q", c.cmd, c.args, e, c.desc)
		}
	}
}

func TestExecCaptureModes(t *testing.T) {
	a := newTestAgent(t, "")
	script := `echo out; echo err >&2`
	cases := []struct {
		capture  string
		out, err string // "" = member absent
	}{
		{`true`, "out\n", "err\n"},
		{`"separated"`, "out\n", "err\n"},
		{`"stdout"`, "out\n", ""},
		{`"stderr"`, "", "err\n"},
		{`"none"`, "", ""},
		{`false`, "", ""},
		{``, "", ""},
	}
	for _, c := range cases {
		args := `{"path":"/bin/sh","arg":["-c",` + jsonArgs(t, script) + `]`
		if c.capture != "" {
			args += `,"capture-output":` + c.capture
		}
		st := a.run(args + "}")
		for _, m := range []struct{ key, want string }{{"out-data", c.out}, {"err-data", c.err}} {
			if m.want == "" {
				if _, ok := st[m.key]; ok {
					t.Errorf("capture %s: unexpected %s in %v", c.capture, m.key, st)
				}
				continue
			}
			if got := decoded(t, st, m.key); got != m.want {
				t.Errorf("capture %s: %s = %q, want %q", c.capture, m.key, got, m.want)
			}
		}
	}
}

func TestExecInputDataRoundTrip(t *testing.T) {
	a := newTestAgent(t, "")
	// Larger than a pipe buffer both ways, every byte value: cat must be
	// fed and drained at the same time.
	in := make([]byte, 1<<20)
	if _, err := rand.Read(in); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 256; i++ {
		in[i] = byte(i)
	}
	st := a.run(jsonArgs(t, map[string]any{"path": "/bin/cat", "input-data": base64.StdEncoding.EncodeToString(in), "capture-output": true}))
	if got := decoded(t, st, "out-data"); !bytes.Equal([]byte(got), in) {
		t.Fatalf("cat returned %d bytes, not the %d sent", len(got), len(in))
	}
	// qbase64_decode's leniency: no padding, embedded newlines.
	st = a.run(`{"path":"/bin/cat","input-data":"aGVs\nbG8","capture-output":true}`)
	if got := decoded(t, st, "out-data"); got != "hello" {
		t.Fatalf("lenient base64: %q", got)
	}
	// Empty input: stdin is a pipe closed at once.
	st = a.run(`{"path":"/bin/sh","arg":["-c","cat; echo rc=$?"],"input-data":"","capture-output":true}`)
	if got := decoded(t, st, "out-data"); got != "rc=0\n" {
		t.Fatalf("empty input: %q", got)
	}
	// Without input-data stdin is /dev/null, as glib does.
	st = a.run(`{"path":"/bin/sh","arg":["-c","readlink /proc/self/fd/0"],"capture-output":true}`)
	if got := decoded(t, st, "out-data"); got != "/dev/null\n" {
		t.Fatalf("stdin without input-data: %q", got)
	}
}

func TestExecEnv(t *testing.T) {
	a := newTestAgent(t, "")
	// Given env is the whole environment, verbatim (qemu-ga passes envp).
	st := a.run(`{"path":"/usr/bin/env","env":["A=1","B=two words","C="],"capture-output":true}`)
	if got := decoded(t, st, "out-data"); got != "A=1\nB=two words\nC=\n" {
		t.Fatalf("env: %q", got)
	}
	st = a.run(`{"path":"/usr/bin/env","env":[],"capture-output":true}`)
	if _, ok := st["out-data"]; ok || st["exitcode"] != float64(0) {
		t.Fatalf("empty env: %v", st)
	}
	// Without env the child inherits the agent's environment.
	t.Setenv("CMDEXEC_TEST_VAR", "inherited")
	st = a.run(`{"path":"/usr/bin/env","capture-output":true}`)
	if got := decoded(t, st, "out-data"); !strings.Contains(got, "CMDEXEC_TEST_VAR=inherited\n") {
		t.Fatalf("inherited env lacks the variable: %q", got)
	}
	// argv[0] is the path as given, the arguments follow untouched (no shell).
	st = a.run(`{"path":"/bin/sh","arg":["-c","printf '%s|' \"$0\" \"$@\"","a b","$HOME","*"],"capture-output":true}`)
	if got := decoded(t, st, "out-data"); got != "a b|$HOME|*|" {
		t.Fatalf("arguments: %q", got)
	}
	// The working directory is /, like qemu-ga running as a service.
	st = a.run(`{"path":"/bin/pwd","capture-output":true}`)
	if got := decoded(t, st, "out-data"); got != "/\n" {
		t.Fatalf("cwd: %q", got)
	}
}

func TestExecExitCodeAndSignal(t *testing.T) {
	a := newTestAgent(t, "")
	st := a.run(`{"path":"/bin/sh","arg":["-c","kill -9 $$"]}`)
	if st["signal"] != float64(9) {
		t.Fatalf("signal: %v", st)
	}
	if _, ok := st["exitcode"]; ok {
		t.Fatalf("exitcode beside signal: %v", st)
	}
	st = a.run(`{"path":"/bin/sh","arg":["-c","exit 3"]}`)
	if st["exitcode"] != float64(3) || len(st) != 2 {
		t.Fatalf("exit 3: %v", st)
	}
}

func TestExecTruncation(t *testing.T) {
	a := newTestAgent(t, `{"max_output_bytes":1000}`)
	st := a.run(`{"path":"/bin/sh","arg":["-c","head -c 300000 /dev/zero; head -c 10 /dev/zero >&2"],"capture-output":true}`)
	if got := decoded(t, st, "out-data"); len(got) != 1000 {
		t.Fatalf("kept %d bytes of stdout, want 1000", len(got))
	}
	if st["out-truncated"] != true || st["err-truncated"] != false || st["exitcode"] != float64(0) {
		t.Fatalf("flags: %v", st)
	}
	if got := decoded(t, st, "err-data"); len(got) != 10 {
		t.Fatalf("stderr: %d bytes", len(got))
	}
	// Exactly the cap is not truncated.
	st = a.run(`{"path":"/bin/sh","arg":["-c","head -c 1000 /dev/zero >&2"],"capture-output":"stderr"}`)
	if got := decoded(t, st, "err-data"); len(got) != 1000 || st["err-truncated"] != false {
		t.Fatalf("exactly the cap: %d bytes, %v", len(got), st["err-truncated"])
	}
}

func TestExecConcurrencyLimit(t *testing.T) {
	a := newTestAgent(t, `{"max_concurrent":2}`)
	p1 := a.exec(`{"path":"/bin/sleep","arg":["30"]}`)
	a.exec(`{"path":"/bin/sleep","arg":["30"]}`)
	_, e := a.call("guest-exec", `{"path":"/bin/true"}`)
	want := "guest-exec refused: 2 commands are already running (max_concurrent is 2)"
	if e == nil || e.Desc != want {
		t.Fatalf("third exec: %v, want %q", e, want)
	}
	// A failed spawn gives its slot back.
	if _, e := a.call("guest-exec", `{"path":"/nonexistent"}`); e == nil {
		t.Fatal("exec of a missing file succeeded")
	}
	if err := syscall.Kill(int(p1), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if st := a.wait(p1); st["signal"] != float64(9) {
		t.Fatalf("killed sleep: %v", st)
	}
	a.run(`{"path":"/bin/true"}`)
}

func TestExecRetention(t *testing.T) {
	short := newTestAgent(t, `{"status_retention":"100ms"}`)
	long := newTestAgent(t, `{"status_retention":60}`)
	ps := short.exec(`{"path":"/bin/true","capture-output":true}`)
	pl := long.exec(`{"path":"/bin/true","capture-output":true}`)
	time.Sleep(700 * time.Millisecond)
	if _, e := short.call("guest-exec-status", fmt.Sprintf(`{"pid":%d}`, ps)); e == nil || e.Desc != "Invalid parameter 'pid'" {
		t.Fatalf("unclaimed status after its retention: %v", e)
	}
	if st := long.mustCall("guest-exec-status", fmt.Sprintf(`{"pid":%d}`, pl)); st["exited"] != true {
		t.Fatalf("unclaimed status within its retention: %v", st)
	}
	short.ex.mu.Lock()
	n := len(short.ex.procs)
	short.ex.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d records left after expiry", n)
	}
}

func TestExecNoZombies(t *testing.T) {
	// The checker itself must see a zombie: make one on purpose.
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{Files: []*os.File{devnull, devnull, devnull}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a deliberate zombie", 5*time.Second, func() bool { return len(zombieChildren()) > 0 })
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if z := zombieChildren(); len(z) != 0 {
		t.Fatalf("zombies before the test: %v", z)
	}

	a := newTestAgent(t, "")
	var claimed, unclaimed []int64
	for i := 0; i < 10; i++ {
		claimed = append(claimed, a.exec(`{"path":"/bin/sh","arg":["-c","exit 1"],"capture-output":true}`))
		unclaimed = append(unclaimed, a.exec(`{"path":"/bin/sh","arg":["-c","kill -9 $$"]}`))
		unclaimed = append(unclaimed, a.exec(`{"path":"/bin/cat","input-data":"eA=="}`))
	}
	for _, pid := range claimed {
		a.wait(pid)
	}
	// Nobody asks for the others: they must be reaped all the same.
	waitFor(t, "unclaimed children to finish", 10*time.Second, func() bool {
		for _, pid := range unclaimed {
			if alive(int(pid)) {
				return false
			}
		}
		return true
	})
	waitFor(t, "no zombie children", 5*time.Second, func() bool { return len(zombieChildren()) == 0 })
}

func TestExecAllowedPaths(t *testing.T) {
	a := newTestAgent(t, `{"allowed_paths":["/usr/bin/echo","/bin/sh"]}`)
	// A bare name is allowed when its PATH lookup lands on an allowed path.
	t.Setenv("PATH", "/usr/bin:/bin")
	if st := a.run(`{"path":"echo","arg":["x"],"capture-output":true}`); decoded(t, st, "out-data") != "x\n" {
		t.Fatalf("allowed echo: %v", st)
	}
	a.run(`{"path":"/usr/bin/../bin/echo"}`)
	a.run(`{"path":"/bin/sh","arg":["-c","true"]}`)
	// Compared after the kernel's resolution: /bin is a symlink to usr/bin
	// on a merged-/usr system, so /bin/echo is /usr/bin/echo; /usr/bin/dash,
	// where /bin/sh leads, is not /bin/sh (the last name counts).
	if fi, err := os.Lstat("/bin"); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		a.run(`{"path":"/bin/echo"}`)
	}
	for _, path := range []string{"/usr/bin/env", "/usr/bin/dash", "env", "/nonexistent/tool", "./echo", "/usr/bin/echo/", ""} {
		_, e := a.call("guest-exec", jsonArgs(t, map[string]any{"path": path}))
		want := fmt.Sprintf("guest-exec of '%s' refused: not in the allowed_paths of cmd-exec", path)
		if e == nil || e.Class != "GenericError" || e.Desc != want {
			t.Errorf("exec %q: %v, want %q", path, e, want)
		}
	}
}

func TestExecProcessGroup(t *testing.T) {
	a := newTestAgent(t, "")
	pid := a.exec(`{"path":"/bin/sleep","arg":["30"]}`)
	st, err := readStat(int(pid))
	if err != nil {
		t.Fatal(err)
	}
	if st.pgrp != int(pid) || st.pgrp == syscall.Getpgrp() {
		t.Fatalf("child pgrp %d, want its own group %d (ours is %d)", st.pgrp, pid, syscall.Getpgrp())
	}
}

// A command that never reads its large input, and slow commands, block
// neither guest-exec nor guest-exec-status nor each other.
func TestExecSlowCommandsDoNotBlock(t *testing.T) {
	a := newTestAgent(t, "")
	big := base64.StdEncoding.EncodeToString(make([]byte, 1<<20)) // > a pipe buffer
	start := time.Now()
	var wg sync.WaitGroup
	pids := make([]int64, 8)
	for i := range pids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pids[i] = a.exec(`{"path":"/bin/sleep","arg":["30"],"input-data":"` + big + `"}`)
		}()
	}
	wg.Wait()
	for _, pid := range pids {
		if st := a.mustCall("guest-exec-status", fmt.Sprintf(`{"pid":%d}`, pid)); st["exited"] != false {
			t.Fatalf("sleep 30 exited: %v", st)
		}
	}
	a.run(`{"path":"/bin/true"}`)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s with slow commands running", d)
	}
	// Killing a child that never read its input ends the pending write.
	for _, pid := range pids {
		_ = syscall.Kill(int(pid), syscall.SIGKILL)
		if st := a.wait(pid); st["signal"] != float64(9) {
			t.Fatalf("killed: %v", st)
		}
	}
}

// exited stays false while a grandchild holds the captured output open, as
// in qemu-ga, so that out-data is complete when exited is true.
func TestExecExitedWaitsForOutput(t *testing.T) {
	a := newTestAgent(t, "")
	pid := a.exec(`{"path":"/bin/sh","arg":["-c","(sleep 0.4; echo late) & echo early"],"capture-output":true}`)
	time.Sleep(150 * time.Millisecond)
	if st := a.mustCall("guest-exec-status", fmt.Sprintf(`{"pid":%d}`, pid)); st["exited"] != false {
		t.Fatalf("exited while the output is still open: %v", st)
	}
	st := a.wait(pid)
	if got := decoded(t, st, "out-data"); got != "early\nlate\n" {
		t.Fatalf("out-data %q", got)
	}
}

func TestOptions(t *testing.T) {
	o, err := decodeOptions(nil)
	if err != nil || o.MaxOutputBytes != 16<<20 || time.Duration(o.StatusRetention) != 10*time.Minute || o.MaxConcurrent != 64 || o.KillOnExit {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	o, err = decodeOptions([]byte(`{"max_output_bytes":5,"status_retention":"1h","max_concurrent":3,"allowed_paths":["/usr/bin/../bin/x"],"commands_dir":"/etc/x","kill_on_exit":true}`))
	if err != nil || o.MaxOutputBytes != 5 || time.Duration(o.StatusRetention) != time.Hour || o.MaxConcurrent != 3 || o.AllowedPaths[0] != "/usr/bin/../bin/x" || !o.KillOnExit {
		t.Fatalf("decoded: %+v %v", o, err)
	}
	if o, err := decodeOptions([]byte(`{"stream_idle":"2s"}`)); err != nil || time.Duration(o.StreamIdle) != 2*time.Second {
		t.Fatalf("stream_idle: %+v %v", o, err)
	}
	if time.Duration(defaultOptions().StreamIdle) != 30*time.Second {
		t.Fatal("stream_idle's default is not 30 s")
	}
	for _, bad := range []string{`{"stream_idle":"-1s"}`, `{"max_output":1}`, `{"allowed_paths":["bin/x"]}`, `{"allowed_paths":["/usr/bin/"]}`, `{"allowed_paths":["/usr/bin/.."]}`, `{"max_concurrent":-1}`, `{"status_retention":"soon"}`, `{"commands_dir":"rel"}`} {
		if _, err := decodeOptions([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

package guestctl

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// startGuestctl starts guestctl with its stdout on a pipe read line by line.
func startGuestctl(t *testing.T, args ...string) (*exec.Cmd, <-chan stampedLine, *harness.SyncBuffer) {
	t.Helper()
	cmd := exec.Command(filepath.Join(harness.BinDir(t), "guestctl"), args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &harness.SyncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan stampedLine, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- stampedLine{sc.Text(), time.Now()}
		}
	}()
	return cmd, lines, stderr
}

type stampedLine struct {
	text string
	at   time.Time
}

// exitOf waits for cmd and returns its exit code.
func exitOf(t *testing.T, cmd *exec.Cmd, within time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(within):
		t.Fatalf("guestctl did not exit within %s", within)
		return 0
	}
}

// guestProcesses lists the live processes whose command line is marker
// (its arguments joined by spaces).
func guestProcesses(marker string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.TrimSuffix(strings.ReplaceAll(string(b), "\x00", " "), " ") == marker {
			if st, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil && !strings.Contains(string(st), ") Z ") {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func waitGone(t *testing.T, marker string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for len(guestProcesses(marker)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("guest processes %q still running: %v", marker, guestProcesses(marker))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestExecStreams: a guest program printing a line a second. With
// guest-agent each line shows while the program runs; qemu-ga returns
// output only at the end (guestctl polls guest-exec-status), so there the
// lines must all arrive, complete and in order.
func TestExecStreams(t *testing.T) {
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		start := time.Now()
		cmd, lines, stderr := startGuestctl(t, "-s", tg.socket, "exec", "--",
			"sh", "-c", "for i in 1 2 3; do echo line $i; echo err $i >&2; sleep 1; done; exit 5")
		var got []stampedLine
		for l := range lines {
			got = append(got, l)
		}
		code := exitOf(t, cmd, 30*time.Second)
		end := time.Now()
		if code != 5 {
			t.Fatalf("exit %d, want 5; stderr %s", code, stderr.String())
		}
		if len(got) != 3 || got[0].text != "line 1" || got[2].text != "line 3" {
			t.Fatalf("stdout lines %v", got)
		}
		if s := stderr.String(); s != "err 1\nerr 2\nerr 3\n" {
			t.Fatalf("stderr %q", s)
		}
		if tg.name == "guest-agent" {
			if early := end.Sub(got[0].at); early < 1500*time.Millisecond {
				t.Fatalf("the first line came %s before the exit (at %s of %s): not streamed", early, got[0].at.Sub(start), end.Sub(start))
			}
			t.Logf("lines at %s, %s, %s; exit at %s", got[0].at.Sub(start), got[1].at.Sub(start), got[2].at.Sub(start), end.Sub(start))
		}
	})
}

// TestExecInterrupt: SIGINT to guestctl stops the guest's command (a
// process group with guest-agent), and guestctl exits 128+SIGTERM.
func TestExecInterrupt(t *testing.T) {
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		marker := "sleep 4242.5" + strconv.Itoa(len(tg.name))
		cmd, lines, stderr := startGuestctl(t, "-s", tg.socket, "exec", "--", "sh", "-c", "echo started; "+marker+"; echo not reached")
		if tg.name == "guest-agent" {
			if l := <-lines; l.text != "started" {
				t.Fatalf("first line %q", l.text)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(guestProcesses(marker)) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the guest command never started: %s", stderr.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		code := exitOf(t, cmd, 15*time.Second)
		if tg.name == "guest-agent" && code != 128+int(syscall.SIGTERM) {
			t.Fatalf("exit %d after SIGINT, want %d; stderr %s", code, 128+int(syscall.SIGTERM), stderr.String())
		}
		if tg.name == "qemu-ga" && code != 128+int(syscall.SIGKILL) {
			// qemu-ga: SIGTERM reaches sh alone, sleep keeps the output
			// open, guestctl escalates to SIGKILL after 3 s.
			t.Fatalf("exit %d after SIGINT, want %d; stderr %s", code, 128+int(syscall.SIGKILL), stderr.String())
		}
		if tg.name == "guest-agent" {
			waitGone(t, marker, 5*time.Second)
		} else {
			for _, pid := range guestProcesses(marker) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}

// TestExecExitCodesAndSignals: the command's exit code, 128+signal, 255
// for a program that cannot start.
func TestExecExitCodesAndSignals(t *testing.T) {
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		for _, c := range []struct {
			argv []string
			code int
		}{
			{[]string{"true"}, 0},
			{[]string{"sh", "-c", "exit 42"}, 42},
			{[]string{"sh", "-c", "kill -KILL $$"}, 137},
			{[]string{"sh", "-c", "kill -USR1 $$"}, 128 + 10},
			{[]string{"/nonexistent/program"}, 255},
		} {
			r := guestctl(t, timeout, nil, append([]string{"-s", tg.socket, "exec", "--"}, c.argv...)...)
			if r.code != c.code {
				t.Errorf("%q: exit %d, want %d (stderr %q)", c.argv, r.code, c.code, r.stderr)
			}
		}
		// Flags after CMD are CMD's.
		r := mustRun(t, "-s", tg.socket, "exec", "echo", "-n", "--timeout", "x")
		if r.stdout != "--timeout x" {
			t.Fatalf("echo's arguments: %q", r.stdout)
		}
		r = mustRun(t, "-s", tg.socket, "exec", "--env", "GREETING=hi there", "--", "sh", "-c", `echo "$GREETING" $PATH`)
		if !strings.HasPrefix(r.stdout, "hi there /usr/local/sbin:") {
			t.Fatalf("--env: %q", r.stdout)
		}
	})
}

// TestExecStdin: stdin passes through (while the command runs with
// guest-agent, as a whole with qemu-ga).
func TestExecStdin(t *testing.T) {
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		in := strings.Repeat("0123456789abcdef", 40000) + "end\n" // 640 KiB: several writes, more than a pipe holds
		r := guestctl(t, timeout, []byte(in), "-s", tg.socket, "exec", "-i", "--", "sha256sum")
		sum := sha256.Sum256([]byte(in))
		if want := hex.EncodeToString(sum[:]) + "  -\n"; r.code != 0 || r.stdout != want {
			t.Fatalf("sha256sum of stdin: exit %d, %q, want %q; stderr %q", r.code, r.stdout, want, r.stderr)
		}
		cat := guestctl(t, timeout, []byte(in), "-s", tg.socket, "exec", "-i", "--", "cat")
		if cat.code != 0 || cat.stdout != in {
			t.Fatalf("cat of stdin: exit %d, %d of %d bytes back; stderr %q", cat.code, len(cat.stdout), len(in), cat.stderr)
		}
	})
}

// TestExecTimeLimit: --timeout kills the command (its whole tree with
// guest-agent) and guestctl exits 124.
func TestExecTimeLimit(t *testing.T) {
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		marker := "sleep 4343.5" + strconv.Itoa(len(tg.name))
		start := time.Now()
		r := guestctl(t, timeout, nil, "-s", tg.socket, "exec", "--timeout", "1s", "--", "sh", "-c", marker+" & "+marker+"; wait")
		if r.code != 124 || !strings.Contains(r.stderr, "time limit (1s) passed") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Fatalf("a 1 s limit took %s", took)
		}
		if tg.name == "guest-agent" {
			waitGone(t, marker, 5*time.Second) // both sleeps: the group
		} else {
			// qemu-ga: guestctl kills the process it started (kill(1) in the
			// guest); what that started is left, as qemu-ga offers no group.
			for _, pid := range guestProcesses(marker) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}

// TestExecCwdAndUser: guest-agent runs the command in a directory and as
// another user; with qemu-ga guestctl refuses rather than ignore them.
func TestExecCwdAndUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("running as another user needs root")
	}
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		r := guestctl(t, timeout, nil, "-s", tg.socket, "exec", "--cwd", "/tmp", "--user", "nobody", "--", "sh", "-c", "pwd; id -un")
		if tg.name == "qemu-ga" {
			if r.code != 255 || !strings.Contains(r.stderr, "need guest-agent") {
				t.Fatalf("qemu-ga with --cwd: exit %d %q", r.code, r.stderr)
			}
			return
		}
		if r.code != 0 || r.stdout != "/tmp\nnobody\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	})
}

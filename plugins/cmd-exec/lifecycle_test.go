package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// groupMembers are the live processes of a process group.
func groupMembers(pgrp int) []procStat {
	return processes(func(s procStat) bool { return s.pgrp == pgrp && s.state != 'Z' })
}

// waitGroupGone fails unless the process group of pid is gone: the signal
// reaches the whole group at once, but a grandchild reparented to init may
// still be finishing its exit for a moment under load.
func waitGroupGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for len(groupMembers(pid)) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if m := groupMembers(pid); len(m) != 0 {
		t.Fatalf("group members left after shutdown: %v", m)
	}
}

func TestShutdownKillOnExit(t *testing.T) {
	a := newTestAgent(t, `{"kill_on_exit":true}`)
	// A grandchild in the same group holds the output pipe: the whole
	// group must go.
	pid := a.exec(`{"path":"/bin/sh","arg":["-c","sleep 30 & sleep 30"],"capture-output":true}`)
	waitFor(t, "the grandchild", 5*time.Second, func() bool { return len(groupMembers(int(pid))) >= 2 })
	start := time.Now()
	a.ex.shutdown()
	if d := time.Since(start); d > killGrace {
		t.Fatalf("shutdown took %s: SIGTERM should have been enough", d)
	}
	waitGroupGone(t, int(pid))
	st := a.mustCall("guest-exec-status", fmt.Sprintf(`{"pid":%d}`, pid))
	if st["exited"] != true || st["signal"] != float64(syscall.SIGTERM) {
		t.Fatalf("status after shutdown: %v", st)
	}
	if _, e := a.call("guest-exec", `{"path":"/bin/true"}`); e == nil || !strings.Contains(e.Desc, "shutting down") {
		t.Fatalf("exec after shutdown: %v", e)
	}
}

func TestShutdownKillOnExitEscalates(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the SIGTERM grace period")
	}
	a := newTestAgent(t, `{"kill_on_exit":true}`)
	pid := a.exec(`{"path":"/bin/sh","arg":["-c","trap '' TERM; echo ready; sleep 30"],"capture-output":true}`)
	waitFor(t, "the trap", 5*time.Second, func() bool { return len(groupMembers(int(pid))) >= 2 })
	a.ex.shutdown()
	waitGroupGone(t, int(pid))
	if st := a.mustCall("guest-exec-status", fmt.Sprintf(`{"pid":%d}`, pid)); st["signal"] != float64(syscall.SIGKILL) {
		t.Fatalf("status: %v", st)
	}
}

func TestShutdownDefaultLeavesChildren(t *testing.T) {
	a := newTestAgent(t, "")
	pid := a.exec(`{"path":"/bin/sleep","arg":["30"]}`)
	a.ex.shutdown()
	if !alive(int(pid)) {
		t.Fatal("child killed by shutdown without kill_on_exit")
	}
	if _, e := a.call("guest-exec", `{"path":"/bin/true"}`); e == nil || !strings.Contains(e.Desc, "shutting down") {
		t.Fatalf("exec after shutdown: %v", e)
	}
	// Still reaped by the plugin while it lives.
	_ = syscall.Kill(int(pid), syscall.SIGKILL)
	a.wait(int64(pid))
	waitFor(t, "no zombie children", 5*time.Second, func() bool { return len(zombieChildren()) == 0 })
}

const helperEnv = "CMDEXEC_TEST_HELPER_OPTIONS"

// helperMain is the test binary acting as the plugin process: it starts
// `sleep 30` through guest-exec, prints the pid and waits to be killed.
func helperMain(opts string) {
	p, ex := newPlugin()
	p.Logger = hclog.NewNullLogger()
	stopOnSigterm(p, ex)
	if err := p.Configure(sdk.Config{Options: json.RawMessage(opts), Logger: hclog.NewNullLogger()}); err != nil {
		fmt.Println("configure:", err)
		os.Exit(2)
	}
	resp := p.Run(context.Background(), &pb.RunRequest{Command: "guest-exec", ArgsJson: []byte(`{"path":"/bin/sleep","arg":["30"],"capture-output":true}`)})
	if resp.Error != nil {
		fmt.Println("exec:", resp.Error.Desc)
		os.Exit(2)
	}
	fmt.Println(string(resp.ResultJson))
	time.Sleep(time.Minute)
}

// TestPluginProcessEnd stops a real plugin process (the test binary as
// helperMain) that has a running child, with SIGKILL or SIGTERM. The test
// process is made a child subreaper so that it inherits orphans, can check
// them and reaps them (this machine's PID 1 may not).
func TestPluginProcessEnd(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("no child subreaper: %v", err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	const (
		survives        = iota // orphaned, alive, reaped by whoever inherits it
		killedOrphan           // killed by the parent-death signal, reaped by whoever inherits it
		killedAndReaped        // killed and reaped by the plugin itself before it exits
	)
	for _, c := range []struct {
		name string
		opts string
		sig  syscall.Signal
		want int
	}{
		{"SIGKILL default: the child outlives the plugin, as qemu-ga's do", "", syscall.SIGKILL, survives},
		{"SIGTERM default: the child outlives the plugin", "", syscall.SIGTERM, survives},
		{"SIGKILL kill_on_exit: the parent-death signal kills the child", `{"kill_on_exit":true}`, syscall.SIGKILL, killedOrphan},
		{"SIGTERM kill_on_exit: the plugin kills and reaps the child", `{"kill_on_exit":true}`, syscall.SIGTERM, killedAndReaped},
	} {
		t.Run(c.name, func(t *testing.T) {
			helper := exec.Command(os.Args[0], "-test.run=^$")
			helper.Env = append(os.Environ(), helperEnv+"="+c.opts)
			out, err := helper.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := helper.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				t.Fatalf("helper: %v", err)
			}
			var r struct{ Pid int }
			if err := json.Unmarshal([]byte(line), &r); err != nil || r.Pid <= 0 {
				t.Fatalf("helper said %q", line)
			}
			_ = helper.Process.Signal(c.sig)
			_ = helper.Wait()

			if c.want == killedAndReaped {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d", r.Pid)); err == nil {
					st, _ := readStat(r.Pid)
					_ = syscall.Kill(r.Pid, syscall.SIGKILL)
					_, _ = unix.Wait4(r.Pid, nil, 0, nil)
					t.Fatalf("child left behind by the plugin: %+v", st)
				}
				return
			}
			type waited struct {
				ws  unix.WaitStatus
				err error
			}
			reaped := make(chan waited, 1)
			go func() {
				var ws unix.WaitStatus
				var err error
				for {
					_, err = unix.Wait4(r.Pid, &ws, 0, nil)
					if err != unix.EINTR {
						break
					}
				}
				reaped <- waited{ws, err}
			}()
			if c.want == survives {
				st, err := readStat(r.Pid)
				if err != nil || st.state == 'Z' || st.ppid != os.Getpid() {
					t.Fatalf("child did not survive the plugin as an orphan: %+v %v", st, err)
				}
				_ = syscall.Kill(r.Pid, syscall.SIGKILL)
			}
			select {
			case w := <-reaped:
				if w.err == unix.ECHILD {
					// Under load the orphan can die and be reaped by its
					// new parent before it is adopted here: it is gone,
					// which is what counts.
					if _, err := os.Stat(fmt.Sprintf("/proc/%d", r.Pid)); err == nil {
						t.Fatalf("orphan %d still exists and is not ours to wait for", r.Pid)
					}
					return
				}
				if w.ws.Signal() != syscall.SIGKILL {
					t.Fatalf("orphan ended with %v (%v)", w.ws, w.err)
				}
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(r.Pid, syscall.SIGKILL)
				t.Fatal("child still running after the plugin ended")
			}
		})
	}
}

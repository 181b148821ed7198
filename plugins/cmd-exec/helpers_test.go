package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
)

func TestMain(m *testing.M) {
	if opts, ok := os.LookupEnv(helperEnv); ok {
		helperMain(opts)
		return
	}
	os.Exit(m.Run())
}

// testAgent is the plugin under test, driven through CommandPlugin.Run like
// the data plane drives it.
type testAgent struct {
	t  testing.TB
	p  *sdk.CommandPlugin
	ex *execer
}

func newTestAgent(t testing.TB, opts string) *testAgent {
	t.Helper()
	p, ex := newPlugin()
	p.Logger = hclog.NewNullLogger()
	if err := p.Configure(sdk.Config{Options: json.RawMessage(opts), Logger: hclog.NewNullLogger()}); err != nil {
		t.Fatalf("configure %s: %v", opts, err)
	}
	a := &testAgent{t: t, p: p, ex: ex}
	t.Cleanup(a.killAll)
	return a
}

// killAll ends whatever a failed test left running and waits for the reaper.
func (a *testAgent) killAll() {
	a.ex.mu.Lock()
	var live []*record
	for _, rec := range a.ex.procs {
		if !rec.finished {
			live = append(live, rec)
		}
	}
	a.ex.mu.Unlock()
	signalGroups(live, syscall.SIGKILL)
	waitAll(live, 5*time.Second)
}

// call runs a command; exactly one of the result and the error is non-nil.
func (a *testAgent) call(cmd, args string) (map[string]any, *pb.Error) {
	a.t.Helper()
	resp := a.p.Run(context.Background(), &pb.RunRequest{Command: cmd, ArgsJson: []byte(args)})
	if resp.Error != nil {
		return nil, resp.Error
	}
	var out map[string]any
	if err := json.Unmarshal(resp.ResultJson, &out); err != nil {
		a.t.Fatalf("%s %s: result %s: %v", cmd, args, resp.ResultJson, err)
	}
	return out, nil
}

func (a *testAgent) mustCall(cmd, args string) map[string]any {
	a.t.Helper()
	out, e := a.call(cmd, args)
	if e != nil {
		a.t.Fatalf("%s %s: %s: %s", cmd, args, e.Class, e.Desc)
	}
	return out
}

func (a *testAgent) exec(args string) int64 {
	a.t.Helper()
	out := a.mustCall("guest-exec", args)
	if len(out) != 1 {
		a.t.Fatalf("guest-exec returned %v, want only pid", out)
	}
	pid, ok := out["pid"].(float64)
	if !ok || pid <= 0 {
		a.t.Fatalf("guest-exec returned pid %v", out["pid"])
	}
	return int64(pid)
}

// wait polls guest-exec-status as test-qga.c does until exited.
func (a *testAgent) wait(pid int64) map[string]any {
	a.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := a.mustCall("guest-exec-status", fmt.Sprintf(`{"pid":%d}`, pid))
		if st["exited"] == true {
			return st
		}
		if st["exited"] != false || len(st) != 1 {
			a.t.Fatalf("status of a running process: %v", st)
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("pid %d did not exit in time", pid)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (a *testAgent) run(args string) map[string]any {
	a.t.Helper()
	return a.wait(a.exec(args))
}

func decoded(t testing.TB, st map[string]any, key string) string {
	t.Helper()
	s, ok := st[key].(string)
	if !ok {
		t.Fatalf("%s missing from %v", key, st)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return string(b)
}

func jsonArgs(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// procStat is the part of /proc/PID/stat the tests look at.
type procStat struct {
	pid, ppid, pgrp int
	state           byte
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'.
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(rest) < 3 {
		return procStat{}, fmt.Errorf("short stat %q", s)
	}
	ppid, _ := strconv.Atoi(rest[1])
	pgrp, _ := strconv.Atoi(rest[2])
	return procStat{pid: pid, ppid: ppid, pgrp: pgrp, state: rest[0][0]}, nil
}

// processes lists every process of the system that matches keep.
func processes(keep func(procStat) bool) []procStat {
	ents, _ := os.ReadDir("/proc")
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err == nil && keep(st) {
			out = append(out, st)
		}
	}
	return out
}

// zombieChildren are the zombies whose parent is this test process.
func zombieChildren() []procStat {
	me := os.Getpid()
	return processes(func(s procStat) bool { return s.ppid == me && s.state == 'Z' })
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	st, err := readStat(pid)
	return err == nil && st.state != 'Z'
}

func writeScript(t testing.TB, dir, name, body string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

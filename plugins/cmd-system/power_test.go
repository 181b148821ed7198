package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// powerPlugin points every power helper into dir, where nothing exists
// until the test puts a script there: the machine's own shutdown, systemctl
// and /sys/power/state are never reachable.
func powerPlugin(t *testing.T, dir string, extra map[string]any) *testPlugin {
	opts := map[string]any{
		"shutdown_path": filepath.Join(dir, "shutdown"),
		"poweroff_path": filepath.Join(dir, "poweroff"),
		"halt_path":     filepath.Join(dir, "halt"),
		"reboot_path":   filepath.Join(dir, "reboot"),
		"helper_path":   dir,
		"sys_root":      filepath.Join(dir, "sys"),
	}
	for k, v := range extra {
		opts[k] = v
	}
	return newTestPlugin(t, opts)
}

func TestShutdownFallsBackToShutdown(t *testing.T) {
	dir := t.TempDir()
	_, args, _ := recorder(t, dir, "shutdown", 0, "")
	tp := powerPlugin(t, dir, nil)
	for mode, flag := range map[string]string{"": "-P", "powerdown": "-P", "halt": "-H", "reboot": "-r"} {
		req := `{}`
		if mode != "" {
			req = `{"mode":"` + mode + `"}`
		}
		resp := tp.ok("guest-shutdown", req, nil)
		if !resp.NoResponse {
			t.Errorf("mode %q: a reply would be sent on success", mode)
		}
		// One argv element with spaces: no shell split it.
		want := []string{"-h", flag, "+0", "hypervisor initiated shutdown"}
		if got := readLines(t, args); !equalStrings(got, want) {
			t.Errorf("mode %q: shutdown got %q, want %q", mode, got, want)
		}
	}
}

func TestShutdownPrefersModeProgram(t *testing.T) {
	dir := t.TempDir()
	_, shutdownArgs, _ := recorder(t, dir, "shutdown", 0, "")
	_, poweroffArgs, _ := recorder(t, dir, "poweroff", 0, "")
	_, rebootArgs, _ := recorder(t, dir, "reboot", 0, "")
	// A halt that is not executable is not used.
	writeFile(t, filepath.Join(dir, "halt"), "#!/bin/sh\nexit 0\n", 0o644)
	tp := powerPlugin(t, dir, nil)

	tp.ok("guest-shutdown", `{"mode":"powerdown"}`, nil)
	if got := readLines(t, poweroffArgs); got == nil || len(got) != 0 {
		t.Errorf("poweroff args: %q, want none", got)
	}
	tp.ok("guest-shutdown", `{"mode":"reboot"}`, nil)
	if got := readLines(t, rebootArgs); got == nil || len(got) != 0 {
		t.Errorf("reboot args: %q, want none", got)
	}
	if got := readLines(t, shutdownArgs); got != nil {
		t.Errorf("shutdown ran (%q) although the mode's program exists", got)
	}
	tp.ok("guest-shutdown", `{"mode":"halt"}`, nil)
	if got := readLines(t, shutdownArgs); !equalStrings(got, []string{"-h", "-H", "+0", "hypervisor initiated shutdown"}) {
		t.Errorf("halt fell back to shutdown with %q", got)
	}
}

func TestShutdownErrors(t *testing.T) {
	dir := t.TempDir()
	tp := powerPlugin(t, dir, nil)
	tp.fails("guest-shutdown", `{"mode":"foo"}`, generic, "mode is invalid (valid values are: halt|powerdown|reboot")
	tp.fails("guest-shutdown", `{"mode":1}`, generic, "Invalid parameter type for 'mode', expected: string")
	tp.fails("guest-shutdown", `{"when":"now"}`, generic, "Parameter 'when' is unexpected")
	// Nothing installed.
	tp.fails("guest-shutdown", "", generic,
		"child process has failed to shutdown: failed to exec '"+filepath.Join(dir, "shutdown")+"': No such file or directory\n")
	// A failing shutdown is quoted.
	recorder(t, dir, "shutdown", 3, "shutdown: not now")
	tp.fails("guest-shutdown", "", generic, "child process has failed to shutdown: shutdown: not now")
	recorder(t, dir, "shutdown", 4, "")
	tp.fails("guest-shutdown", "", generic, "child process has failed to shutdown: exit status 4")
	writeScript(t, filepath.Join(dir, "shutdown"), `kill -9 $$`)
	tp.fails("guest-shutdown", "", generic, "child process has terminated abnormally")
}

func TestHelperTimeoutKillsItsSession(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	// The helper leaves a grandchild behind: the whole session must go.
	writeScript(t, filepath.Join(dir, "shutdown"), `sleep 60 & echo $! > `+pidFile+`; wait`)
	tp := powerPlugin(t, dir, map[string]any{"helper_timeout_seconds": 1})
	start := time.Now()
	tp.failsPrefix("guest-shutdown", "", "child process has failed to shutdown: helper ")
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("timeout took %v", d)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	deadline := time.Now().Add(5 * time.Second)
	// Killed and not reaped yet (a zombie waiting for init) counts as gone.
	alive := func() bool {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || syscall.Kill(pid, 0) != nil {
			return false
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		return len(f) > 0 && f[0] != "Z"
	}
	for alive() {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d survived the helper's timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// suspendHelpers writes fake systemctl and pm-utils scripts into dir.
// systemctl exits with statusCode for "status" and records its verb;
// pm-is-supported exits with pmCode.
func suspendHelpers(t *testing.T, dir string, statusCode, verbCode, pmCode int) (systemctlLog, pmLog string) {
	systemctlLog = filepath.Join(dir, "systemctl.log")
	pmLog = filepath.Join(dir, "pm.log")
	if statusCode >= 0 {
		writeScript(t, filepath.Join(dir, "systemctl"), `echo "$*" >> `+systemctlLog+`
[ "$1" = status ] && exit `+strconv.Itoa(statusCode)+`
exit `+strconv.Itoa(verbCode))
	}
	if pmCode >= 0 {
		writeScript(t, filepath.Join(dir, "pm-is-supported"), `echo "is-supported $*" >> `+pmLog+`; exit `+strconv.Itoa(pmCode))
		for _, p := range []string{"pm-hibernate", "pm-suspend", "pm-suspend-hybrid"} {
			writeScript(t, filepath.Join(dir, p), `echo "`+p+`" >> `+pmLog)
		}
	}
	return systemctlLog, pmLog
}

func TestSuspendThroughSystemd(t *testing.T) {
	dir := t.TempDir()
	log, pmLog := suspendHelpers(t, dir, 3, 0, 0)
	tp := powerPlugin(t, dir, nil)
	for cmd, verb := range map[string]string{"guest-suspend-disk": "hibernate", "guest-suspend-ram": "suspend", "guest-suspend-hybrid": "hybrid-sleep"} {
		os.Remove(log)
		resp := tp.ok(cmd, "", nil)
		if !resp.NoResponse {
			t.Errorf("%s: a reply would be sent on success", cmd)
		}
		unit := map[string]string{"hibernate": "systemd-hibernate", "suspend": "systemd-suspend", "hybrid-sleep": "systemd-hybrid-sleep"}[verb]
		if got := readLines(t, log); !equalStrings(got, []string{"status " + unit, verb}) {
			t.Errorf("%s: systemctl calls %q", cmd, got)
		}
	}
	if got := readLines(t, pmLog); got != nil {
		t.Errorf("pm-utils used although systemd did it: %q", got)
	}
}

func TestSuspendThroughPmUtils(t *testing.T) {
	dir := t.TempDir()
	// systemctl knows no such unit (4): pm-utils is next.
	_, pmLog := suspendHelpers(t, dir, 4, 0, 0)
	tp := powerPlugin(t, dir, nil)
	tp.ok("guest-suspend-hybrid", "", nil)
	if got := readLines(t, pmLog); !equalStrings(got, []string{"is-supported --suspend-hybrid", "pm-suspend-hybrid"}) {
		t.Errorf("pm-utils calls %q", got)
	}
}

func TestSuspendThroughSysfs(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "sys", "power", "state")
	writeFile(t, state, "freeze mem\n", 0o644)
	tp := powerPlugin(t, dir, nil) // no systemctl, no pm-utils
	tp.fails("guest-suspend-disk", "", generic, "the requested suspend mode is not supported by the guest")
	tp.fails("guest-suspend-hybrid", "", generic, "the requested suspend mode is not supported by the guest")
	tp.ok("guest-suspend-ram", "", nil)
	data, _ := os.ReadFile(state)
	if !strings.HasPrefix(string(data), "mem") {
		t.Fatalf("power/state holds %q, want mem written", data)
	}
	tp.fails("guest-suspend-ram", `{"x":1}`, generic, "Parameter 'x' is unexpected")

	// pm-is-supported saying no (1) is not an error, just not supported.
	suspendHelpers(t, dir, -1, 0, 1)
	writeFile(t, state, "mem\n", 0o644)
	tp.fails("guest-suspend-disk", "", generic, "the requested suspend mode is not supported by the guest")
}

package main

import (
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
)

// hookSetup is a hook directory and the log its hooks append "name arg" to.
type hookSetup struct {
	dir, log string
}

func newHookSetup(t *testing.T) *hookSetup {
	t.Helper()
	base := t.TempDir()
	h := &hookSetup{dir: filepath.Join(base, "freeze.d"), log: filepath.Join(base, "hooks.log")}
	if err := os.Mkdir(h.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

// hook writes an executable hook into the directory: it logs its name and
// argument, then runs body.
func (h *hookSetup) hook(t *testing.T, name, body string) string {
	t.Helper()
	return writeScript(t, filepath.Join(h.dir, name), fmt.Sprintf("echo %q\" $1\" >> %q\n%s", name, h.log, body))
}

// single writes qemu-ga's -F hook outside the directory, logging as "single".
func (h *hookSetup) single(t *testing.T, body string) string {
	t.Helper()
	return writeScript(t, filepath.Join(filepath.Dir(h.dir), "fsfreeze-hook"), fmt.Sprintf("echo \"single $1\" >> %q\n%s", h.log, body))
}

func (h *hookSetup) calls(t *testing.T) []string {
	t.Helper()
	return readLines(t, h.log)
}

func (h *hookSetup) want(t *testing.T, what string, want ...string) {
	t.Helper()
	if got := h.calls(t); !equalStrings(got, want) {
		t.Fatalf("%s: hooks ran\n  %q\nwant\n  %q", what, got, want)
	}
}

// processGone tells whether pid has ended (a zombie waiting for its
// reaper counts as ended).
func processGone(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil || syscall.Kill(pid, 0) != nil {
		return true
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(f) == 0 || f[0] == "Z"
}

// Around a real freeze: qemu-ga's hook, then the directory's executables in
// lexical order with "freeze", before FIFREEZE (each writes into the
// filesystem about to be frozen, which would block after it); on thaw, after
// FITHAW (they write again), the directory's in reverse, then qemu-ga's.
// Non-executables, directories, hidden files and editor/package leftovers
// never run; a symlink to an executable does.
func TestFreezeHooksOrder(t *testing.T) {
	fs := mountTestFS(t)
	h := newHookSetup(t)
	touch := `echo "$1" > ` + fs.mnt + `/"$(basename "$0").$1"`
	for _, name := range []string{"10-first", "20-second", "3-third", "A-upper", "b_lower"} {
		h.hook(t, name, touch)
	}
	// Never run, each would log its name.
	for _, name := range []string{".hidden", "15-editor~", "16-x.bak", "17-x.orig", "18-x.dpkg-old", "19-x.dpkg-dist",
		"21-x.rpmnew", "22-x.rpmsave", "23-x.sample", "24-x.ucf-dist"} {
		h.hook(t, name, "")
	}
	writeFile(t, filepath.Join(h.dir, "12-not-executable"), "#!/bin/sh\necho \"12-not-executable $1\" >> "+h.log+"\n", 0o644)
	if err := os.Mkdir(filepath.Join(h.dir, "13-directory"), 0o755); err != nil {
		t.Fatal(err)
	}
	target := writeScript(t, filepath.Join(t.TempDir(), "elsewhere"), "echo \"25-link $1\" >> "+h.log)
	if err := os.Symlink(target, filepath.Join(h.dir, "25-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(h.dir, "no-such-target"), filepath.Join(h.dir, "26-dangling")); err != nil {
		t.Fatal(err)
	}
	single := h.single(t, touch)

	tp := newTestPlugin(t, map[string]any{
		"fsfreeze_hook": single, "fsfreeze_hook_dir": h.dir, "fsfreeze_hook_timeout_seconds": 5,
		"proc_root": fakeProc(t, fs.mountinfo),
	})
	var n int
	resp := tp.ok("guest-fsfreeze-freeze", "", &n)
	if n != 1 || resp.FreezeState != pb.FreezeState_FREEZE_STATE_FROZEN {
		t.Fatalf("freeze: %d, %v", n, resp.FreezeState)
	}
	h.want(t, "freeze", "single freeze", "10-first freeze", "20-second freeze", "25-link freeze", "3-third freeze",
		"A-upper freeze", "b_lower freeze")
	if !startWriteBlocks(fs.mnt) {
		t.Fatal("the filesystem is not frozen after the freeze")
	}
	tp.ok("guest-fsfreeze-thaw", "", &n)
	if n != 1 {
		t.Fatalf("thaw: %d", n)
	}
	h.want(t, "freeze and thaw", "single freeze", "10-first freeze", "20-second freeze", "25-link freeze", "3-third freeze",
		"A-upper freeze", "b_lower freeze",
		"b_lower thaw", "A-upper thaw", "3-third thaw", "25-link thaw", "20-second thaw", "10-first thaw", "single thaw")
	// What the hooks wrote into the filesystem, freeze and thaw alike.
	for _, name := range []string{"fsfreeze-hook", "10-first", "3-third", "b_lower"} {
		for _, arg := range []string{"freeze", "thaw"} {
			if got := readLines(t, filepath.Join(fs.mnt, name+"."+arg)); !equalStrings(got, []string{arg}) {
				t.Errorf("%s %s wrote %q into the filesystem", name, arg, got)
			}
		}
	}
}

// startWriteBlocks tells whether a write into dir is held up.
func startWriteBlocks(dir string) bool {
	select {
	case <-startWrite(filepath.Join(dir, "probe")):
		return false
	case <-time.After(300 * time.Millisecond):
		return true
	}
}

// A freeze hook that fails: the freeze fails naming it, nothing is frozen,
// the hooks after it never run, and the ones that ran, itself included, get
// "thaw" in reverse, then qemu-ga's hook.
func TestFreezeHookFailureThawsWhatRan(t *testing.T) {
	h := newHookSetup(t)
	h.hook(t, "10-a", "")
	h.hook(t, "20-b", `[ "$1" = freeze ] && { echo "database refused the lock" >&2; exit 3; }; exit 0`)
	h.hook(t, "30-c", "")
	single := h.single(t, "")
	tp := newTestPlugin(t, map[string]any{"fsfreeze_hook": single, "fsfreeze_hook_dir": h.dir, "proc_root": fakeProc(t)})
	tp.fails("guest-fsfreeze-freeze", "", generic,
		"fsfreeze hook "+h.dir+"/20-b failed on freeze: exit status 3: database refused the lock")
	h.want(t, "failed freeze", "single freeze", "10-a freeze", "20-b freeze", "20-b thaw", "10-a thaw", "single thaw")
	var st string
	tp.ok("guest-fsfreeze-status", "", &st)
	if st != "thawed" {
		t.Fatalf("status: %q", st)
	}
	if _, err := os.Stat(filepath.Join(tp.runtimeDir, frozenStateFile)); !os.IsNotExist(err) {
		t.Fatalf("state file after a failed freeze: %v", err)
	}

	// qemu-ga's own hook failing is qemu-ga's case: nothing else runs and
	// nothing gets "thaw".
	if err := os.Remove(h.log); err != nil {
		t.Fatal(err)
	}
	h.single(t, `[ "$1" = freeze ] && exit 1; exit 0`)
	tp.fails("guest-fsfreeze-freeze", "", generic, "child process has failed to execute fsfreeze hook: exit status 1")
	h.want(t, "failed qemu-ga hook", "single freeze")
}

// A hook past its time limit is killed with its process group (the child it
// started too) and fails the freeze; it and the hooks before it get "thaw".
func TestFreezeHookTimeoutKillsItsGroup(t *testing.T) {
	h := newHookSetup(t)
	pidFile := filepath.Join(filepath.Dir(h.dir), "child.pid")
	h.hook(t, "10-quick", "")
	h.hook(t, "20-slow", `[ "$1" = thaw ] && exit 0
echo "waiting for the lock"
sleep 60 & echo $! > `+pidFile+`
wait`)
	h.hook(t, "30-never", "")
	tp := newTestPlugin(t, map[string]any{
		"fsfreeze_hook_dir": h.dir, "fsfreeze_hook_timeout_seconds": 1, "proc_root": fakeProc(t),
	})
	start := time.Now()
	tp.fails("guest-fsfreeze-freeze", "", generic, "fsfreeze hook "+h.dir+
		"/20-slow failed on freeze: killed with its process group after its time limit of 1s: waiting for the lock")
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("the freeze failed after %s with a 1 s limit", took)
	}
	h.want(t, "timed-out freeze", "10-quick freeze", "20-slow freeze", "20-slow thaw", "10-quick thaw")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the slow hook's child %d outlived the hook's time limit", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Thaw hooks that fail: every other hook still runs, the filesystem is
// thawed, the state goes, and the reply names each failure.
func TestThawHookFailureStillThaws(t *testing.T) {
	fs := mountTestFS(t)
	h := newHookSetup(t)
	h.hook(t, "10-a", `[ "$1" = thaw ] && exit 5; exit 0`)
	h.hook(t, "20-b", `[ "$1" = thaw ] && { echo "cannot resume the service"; exit 4; }; exit 0`)
	h.hook(t, "30-c", "")
	single := h.single(t, "")
	tp := newTestPlugin(t, map[string]any{
		"fsfreeze_hook": single, "fsfreeze_hook_dir": h.dir, "proc_root": fakeProc(t, fs.mountinfo),
	})
	var n int
	tp.ok("guest-fsfreeze-freeze", "", &n)
	if n != 1 {
		t.Fatalf("froze %d", n)
	}
	done := startWrite(filepath.Join(fs.mnt, "f"))
	resp := tp.run("guest-fsfreeze-thaw", "")
	want := "fsfreeze hook " + h.dir + "/20-b failed on thaw: exit status 4: cannot resume the service; " +
		"fsfreeze hook " + h.dir + "/10-a failed on thaw: exit status 5"
	if resp.Error == nil || resp.Error.Class != generic || resp.Error.Desc != want {
		t.Fatalf("thaw: %v, want %s", resp.Error, want)
	}
	// The error carries the state, so the parser stops refusing commands.
	if resp.FreezeState != pb.FreezeState_FREEZE_STATE_THAWED {
		t.Fatalf("a failed thaw must still report the thawed state, got %v", resp.FreezeState)
	}
	h.want(t, "thaw", "single freeze", "10-a freeze", "20-b freeze", "30-c freeze",
		"30-c thaw", "20-b thaw", "10-a thaw", "single thaw")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still frozen after a thaw whose hooks failed")
	}
	var st string
	resp = tp.ok("guest-fsfreeze-status", "", &st)
	if st != "thawed" || resp.FreezeState != pb.FreezeState_FREEZE_STATE_THAWED {
		t.Fatalf("status after the thaw: %q %v", st, resp.FreezeState)
	}
	if _, err := os.Stat(filepath.Join(tp.runtimeDir, frozenStateFile)); !os.IsNotExist(err) {
		t.Fatalf("state file after the thaw: %v", err)
	}
	tp.ok("guest-get-host-name", "", nil)
}

// A thaw hook past its limit is killed too, and the others still run.
func TestThawHookTimeout(t *testing.T) {
	h := newHookSetup(t)
	h.hook(t, "10-a", "")
	h.hook(t, "20-stuck", `[ "$1" = thaw ] && sleep 60; exit 0`)
	tp := newTestPlugin(t, map[string]any{
		"fsfreeze_hook_dir": h.dir, "fsfreeze_hook_timeout_seconds": 1, "proc_root": fakeProc(t),
	})
	start := time.Now()
	tp.fails("guest-fsfreeze-thaw", "", generic,
		"fsfreeze hook "+h.dir+"/20-stuck failed on thaw: killed with its process group after its time limit of 1s")
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("thaw took %s", took)
	}
	h.want(t, "thaw", "20-stuck thaw", "10-a thaw")
}

// A freeze that froze nothing leaves the guest thawed: the directory's hooks
// are let go at once (qemu-ga's hook is not, as in qemu-ga).
func TestFreezeHooksNothingFrozen(t *testing.T) {
	h := newHookSetup(t)
	h.hook(t, "10-a", "")
	h.hook(t, "20-b", "")
	single := h.single(t, "")
	tp := newTestPlugin(t, map[string]any{"fsfreeze_hook": single, "fsfreeze_hook_dir": h.dir, "proc_root": fakeProc(t)})
	var n int
	resp := tp.ok("guest-fsfreeze-freeze", "", &n)
	if n != 0 || resp.FreezeState != pb.FreezeState_FREEZE_STATE_THAWED {
		t.Fatalf("freeze of nothing: %d %v", n, resp.FreezeState)
	}
	h.want(t, "freeze of nothing", "single freeze", "10-a freeze", "20-b freeze", "20-b thaw", "10-a thaw")
}

// The directory: missing means no hooks, "" disables it, a file where the
// directory should be fails the freeze (and a thaw still thaws and runs
// qemu-ga's hook).
func TestFreezeHookDirCases(t *testing.T) {
	h := newHookSetup(t)
	h.hook(t, "10-a", "")
	single := h.single(t, "")

	missing := newTestPlugin(t, map[string]any{"fsfreeze_hook_dir": filepath.Join(h.dir, "nope"), "proc_root": fakeProc(t)})
	var n int
	missing.ok("guest-fsfreeze-freeze", "", &n)
	missing.ok("guest-fsfreeze-thaw", "", &n)

	disabled := newTestPlugin(t, map[string]any{"fsfreeze_hook_dir": "", "fsfreeze_hook": single, "proc_root": fakeProc(t)})
	disabled.ok("guest-fsfreeze-freeze", "", &n)
	disabled.ok("guest-fsfreeze-thaw", "", &n)
	h.want(t, "directory disabled", "single freeze", "single thaw")
	if err := os.Remove(h.log); err != nil {
		t.Fatal(err)
	}

	notDir := filepath.Join(h.dir, "10-a")
	bad := newTestPlugin(t, map[string]any{"fsfreeze_hook_dir": notDir, "fsfreeze_hook": single, "proc_root": fakeProc(t)})
	bad.fails("guest-fsfreeze-freeze", "", generic, "fsfreeze hook directory "+notDir+": Not a directory")
	h.want(t, "unreadable directory: freeze", []string{}...)
	bad.fails("guest-fsfreeze-thaw", "", generic, "fsfreeze hook directory "+notDir+": Not a directory")
	h.want(t, "unreadable directory: thaw", "single thaw")
}

func TestIgnoredHookNames(t *testing.T) {
	for name, want := range map[string]bool{
		"10-mysql": false, "mysql-flush.sh": false, "a.b.c": false, "rpm-helper": false, "dpkg-x": false,
		".hidden": true, "x~": true, "x.bak": true, "x.orig": true, "x.sample": true,
		"x.dpkg-old": true, "x.dpkg-new": true, "x.dpkg-tmp": true, "x.dpkg-dist": true, "x.dpkg-bak": true,
		"x.dpkg-backup": true, "x.dpkg-remove": true, "x.rpmnew": true, "x.rpmorig": true, "x.rpmsave": true,
		"x.ucf-dist": true,
	} {
		if got := ignoredHook(name); got != want {
			t.Errorf("ignoredHook(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestFreezeHookOptions(t *testing.T) {
	tp := newTestPlugin(t, nil)
	if o := tp.sys.opts; o.FsfreezeHookDir != "/etc/guest-agent/freeze.d" || o.FsfreezeHookTimeoutSeconds != 60 ||
		o.hookTimeout() != time.Minute {
		t.Fatalf("defaults: dir %q, timeout %d", o.FsfreezeHookDir, o.FsfreezeHookTimeoutSeconds)
	}
	tp = newTestPlugin(t, map[string]any{"fsfreeze_hook_timeout_seconds": 0, "helper_timeout_seconds": 7, "fsfreeze_hook_dir": "/x/y/"})
	if o := tp.sys.opts; o.hookTimeout() != 7*time.Second || o.FsfreezeHookDir != "/x/y" {
		t.Fatalf("timeout 0 = helper_timeout_seconds: %s, dir %q", o.hookTimeout(), o.FsfreezeHookDir)
	}
}

func TestFreezeHookOptionsRefused(t *testing.T) {
	for opts, want := range map[string]string{
		`{"fsfreeze_hook_dir":"freeze.d"}`:       "fsfreeze_hook_dir must be an absolute path or empty",
		`{"fsfreeze_hook_timeout_seconds":-1}`:   "fsfreeze_hook_timeout_seconds must not be negative",
		`{"fsfreeze_hook_timeout_seconds":"60"}`: "cannot unmarshal",
		`{"fsfreeze_hooks_dir":"/etc/freeze.d"}`: "unknown field",
	} {
		err := newSystem().plugin().Configure(sdk.Config{Options: []byte(opts)})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("options %s: error %v, want one saying %q", opts, err, want)
		}
	}
}

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// readHookLog returns the lines the hooks appended, nil before any.
func readHookLog(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(data)), " ", "_"))
}

func wantHookLog(t *testing.T, path, what string, want ...string) {
	t.Helper()
	got := readHookLog(t, path)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s: the hooks ran\n  %q\nwant\n  %q", what, got, want)
	}
}

// cmd-system's fsfreeze_hook_dir through the whole agent, around a real
// FIFREEZE of a loop-mounted ext4: its executables run in lexical order with
// "freeze" before the filesystem is frozen and in reverse order with "thaw"
// after it is thawed (each hook writes into that filesystem, which would
// hold it up while frozen and fail the hook at its time limit). A hook that
// fails its freeze fails the freeze with an error naming it, nothing stays
// frozen, and the hooks that ran are thawed in reverse.
func TestFreezeHookDirAroundRealFreeze(t *testing.T) {
	mnt := harness.LoopFS(t)
	base := t.TempDir()
	dir, hookLog := filepath.Join(base, "freeze.d"), filepath.Join(base, "hooks.log")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	failFlag := filepath.Join(base, "fail-app")
	hook := func(name string, mode os.FileMode) {
		script := fmt.Sprintf(`#!/bin/sh
echo "%[1]s $1" >> %[2]q
if [ "$1" = freeze ] && [ -e %[4]q ] && [ %[1]q = 20-app ]; then echo "app refused to quiesce"; exit 7; fi
echo "$1" > %[3]q/%[1]s."$1"
`, name, hookLog, mnt, failFlag)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), mode); err != nil {
			t.Fatal(err)
		}
	}
	hook("10-db", 0o755)
	hook("20-app", 0o755)
	hook("9-cache", 0o755)         // "9" sorts after "2": lexical, not numeric
	hook("15-disabled", 0o644)     // not executable
	hook("20-app.dpkg-old", 0o755) // a package manager's leftover

	_, sock := startAgentConfig(t, fmt.Sprintf(`
plugin "cmd-system" {
  options = { fsfreeze_hook_dir = %q, fsfreeze_hook_timeout_seconds = 5 }
}
`, dir))
	c := harness.MustDial(t, sock)
	if n := freezeList(t, c, mnt); n != 1 {
		t.Fatalf("froze %d filesystems, want 1", n)
	}
	wantHookLog(t, hookLog, "after the freeze", "10-db_freeze", "20-app_freeze", "9-cache_freeze")
	if !writeBlocks(t, mnt) {
		t.Fatal("the filesystem is not frozen")
	}
	var n int
	decodeReturn(t, callWithin(t, c, `{"execute":"guest-fsfreeze-thaw"}`+"\n", 20*time.Second), &n)
	if n != 1 {
		t.Fatalf("thawed %d filesystems, want 1", n)
	}
	wantHookLog(t, hookLog, "after the thaw", "10-db_freeze", "20-app_freeze", "9-cache_freeze",
		"9-cache_thaw", "20-app_thaw", "10-db_thaw")
	for _, name := range []string{"10-db", "20-app", "9-cache"} {
		for _, arg := range []string{"freeze", "thaw"} {
			if b, err := os.ReadFile(filepath.Join(mnt, name+"."+arg)); err != nil || string(b) != arg+"\n" {
				t.Errorf("%s %s did not write into the filesystem: %q %v", name, arg, b, err)
			}
		}
	}

	// 20-app fails its freeze now.
	if err := os.Remove(hookLog); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(failFlag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	expectError(t, callWithin(t, c, fmt.Sprintf(`{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[%q]}}`+"\n", mnt), 20*time.Second),
		"GenericError", "fsfreeze hook "+dir+"/20-app failed on freeze: exit status 7: app refused to quiesce")
	wantHookLog(t, hookLog, "after a failed freeze", "10-db_freeze", "20-app_freeze", "20-app_thaw", "10-db_thaw")
	if writeBlocks(t, mnt) {
		t.Fatal("frozen after a failed freeze")
	}
	if got := freezeStatusOf(t, sock); got != "thawed" {
		t.Fatalf("status after a failed freeze: %q", got)
	}
	// Not frozen for the parser either.
	decodeReturn(t, callWithin(t, c, `{"execute":"guest-get-time"}`+"\n", 10*time.Second), new(int64))
}

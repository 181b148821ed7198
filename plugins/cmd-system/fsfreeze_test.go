package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

// These tests freeze only the ext4 filesystem they create: freeze-list with
// its mountpoint, or a stand-in procfs whose mountinfo lists nothing else.
// A plain freeze on the real mount table would freeze the machine's root.

func startWrite(path string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- os.WriteFile(path, []byte("written while frozen?\n"), 0o644) }()
	return done
}

func TestFsfreezeRealFilesystem(t *testing.T) {
	fs := mountTestFS(t)
	hookDir := t.TempDir()
	hookLog := filepath.Join(hookDir, "hook.log")
	hook := writeScript(t, filepath.Join(hookDir, "fsfreeze-hook"), `echo "$1" >> `+hookLog)
	runtimeDir := t.TempDir()

	// Instance A reads the real mount table; freeze-list limits it to ours.
	a := newTestPluginState(t, map[string]any{"fsfreeze_hook": hook}, runtimeDir)
	var st string
	resp := a.ok("guest-fsfreeze-status", "", &st)
	if st != "thawed" || resp.FreezeState != pb.FreezeState_FREEZE_STATE_THAWED {
		t.Fatalf("status before: %q %v", st, resp.FreezeState)
	}
	var n int
	resp = a.ok("guest-fsfreeze-freeze-list", `{"mountpoints":["`+fs.mnt+`"]}`, &n)
	if n != 1 || resp.FreezeState != pb.FreezeState_FREEZE_STATE_FROZEN {
		t.Fatalf("freeze-list: %d frozen, state %v; want 1, FROZEN", n, resp.FreezeState)
	}
	if got := readLines(t, hookLog); !equalStrings(got, []string{"freeze"}) {
		t.Fatalf("hook calls after freeze: %q", got)
	}
	if _, err := os.Stat(filepath.Join(runtimeDir, frozenStateFile)); err != nil {
		t.Fatalf("frozen state file: %v", err)
	}
	resp = a.ok("guest-fsfreeze-status", "", &st)
	if st != "frozen" || resp.FreezeState != pb.FreezeState_FREEZE_STATE_FROZEN {
		t.Fatalf("status while frozen: %q %v", st, resp.FreezeState)
	}
	// Only qemu-ga's frozen-safe commands run now.
	a.fails("guest-get-osinfo", "", sdk.ClassCommandNotFound, "Command guest-get-osinfo has been disabled: the agent is in frozen state")
	a.fails("guest-fsfreeze-freeze", "", sdk.ClassCommandNotFound, "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state")

	// A write to the frozen filesystem blocks.
	done := startWrite(filepath.Join(fs.mnt, "file"))
	select {
	case err := <-done:
		t.Fatalf("write to a frozen filesystem completed (err %v)", err)
	case <-time.After(500 * time.Millisecond):
	}

	// Instance B stands for a restarted plugin: same runtime directory, and a
	// mount table with only our filesystem, so its thaw touches nothing else.
	b := newTestPluginState(t, map[string]any{"fsfreeze_hook": hook, "proc_root": fakeProc(t, fs.mountinfo)}, runtimeDir)
	resp = b.ok("guest-fsfreeze-status", "", &st)
	if st != "frozen" || resp.FreezeState != pb.FreezeState_FREEZE_STATE_FROZEN {
		t.Fatalf("restarted plugin's status: %q %v", st, resp.FreezeState)
	}
	b.fails("guest-get-host-name", "", sdk.ClassCommandNotFound, "Command guest-get-host-name has been disabled: the agent is in frozen state")
	resp = b.ok("guest-fsfreeze-thaw", "", &n)
	if n != 1 || resp.FreezeState != pb.FreezeState_FREEZE_STATE_THAWED {
		t.Fatalf("thaw: %d thawed, state %v; want 1, THAWED", n, resp.FreezeState)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write after thaw: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write still blocked 10s after thaw")
	}
	if got := readLines(t, hookLog); !equalStrings(got, []string{"freeze", "thaw"}) {
		t.Fatalf("hook calls: %q, want freeze then thaw", got)
	}
	if _, err := os.Stat(filepath.Join(runtimeDir, frozenStateFile)); !os.IsNotExist(err) {
		t.Fatalf("frozen state file still there after thaw: %v", err)
	}
	b.ok("guest-fsfreeze-status", "", &st)
	if st != "thawed" {
		t.Fatalf("status after thaw: %q", st)
	}
	b.ok("guest-get-host-name", "", nil)

	// A second thaw finds nothing frozen; qemu-ga still runs the hook.
	b.ok("guest-fsfreeze-thaw", "", &n)
	if n != 0 {
		t.Fatalf("second thaw: %d", n)
	}
	if got := readLines(t, hookLog); len(got) != 3 || got[2] != "thaw" {
		t.Fatalf("hook calls: %q", got)
	}
}

func TestFsfreezePlainFreezeOnOwnMountTable(t *testing.T) {
	fs := mountTestFS(t)
	tp := newTestPlugin(t, map[string]any{"proc_root": fakeProc(t, fs.mountinfo)})
	var n int
	resp := tp.ok("guest-fsfreeze-freeze", "", &n)
	if n != 1 || resp.FreezeState != pb.FreezeState_FREEZE_STATE_FROZEN {
		t.Fatalf("freeze: %d, %v", n, resp.FreezeState)
	}
	done := startWrite(filepath.Join(fs.mnt, "f"))
	select {
	case err := <-done:
		t.Fatalf("write to a frozen filesystem completed (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	tp.ok("guest-fsfreeze-thaw", "", &n)
	if n != 1 {
		t.Fatalf("thaw: %d", n)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write still blocked after thaw")
	}
}

func TestFsfreezeNothingMatched(t *testing.T) {
	hookDir := t.TempDir()
	hookLog := filepath.Join(hookDir, "hook.log")
	hook := writeScript(t, filepath.Join(hookDir, "hook"), `echo "$1" >> `+hookLog)
	tp := newTestPlugin(t, map[string]any{"fsfreeze_hook": hook})
	var n int
	resp := tp.ok("guest-fsfreeze-freeze-list", `{"mountpoints":["/no/such/mountpoint"]}`, &n)
	if n != 0 || resp.FreezeState != pb.FreezeState_FREEZE_STATE_THAWED {
		t.Fatalf("freeze of nothing: %d %v", n, resp.FreezeState)
	}
	var st string
	tp.ok("guest-fsfreeze-status", "", &st)
	if st != "thawed" {
		t.Fatalf("status: %q", st)
	}
	if _, err := os.Stat(filepath.Join(tp.runtimeDir, frozenStateFile)); !os.IsNotExist(err) {
		t.Fatalf("state file left behind: %v", err)
	}
	// The hook ran for the freeze only, as qemu-ga's does.
	if got := readLines(t, hookLog); !equalStrings(got, []string{"freeze"}) {
		t.Fatalf("hook: %q", got)
	}
}

func TestFsfreezeHookFailureFreezesNothing(t *testing.T) {
	fs := mountTestFS(t)
	dir := t.TempDir()
	hook := writeScript(t, filepath.Join(dir, "hook"), `echo "database refused to flush"; exit 2`)
	tp := newTestPlugin(t, map[string]any{"fsfreeze_hook": hook, "proc_root": fakeProc(t, fs.mountinfo)})
	tp.fails("guest-fsfreeze-freeze", "", generic, "child process has failed to execute fsfreeze hook: database refused to flush\n")
	// Not frozen: a write goes through at once.
	select {
	case err := <-startWrite(filepath.Join(fs.mnt, "f")):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("filesystem frozen although the hook failed")
	}
	var st string
	tp.ok("guest-fsfreeze-status", "", &st)
	if st != "thawed" {
		t.Fatalf("status: %q", st)
	}
}

func TestFsfreezeStateFileAtStart(t *testing.T) {
	runtimeDir := t.TempDir()
	writeFile(t, filepath.Join(runtimeDir, frozenStateFile), "", 0o600)
	tp := newTestPluginState(t, map[string]any{"proc_root": fakeProc(t)}, runtimeDir)
	var st string
	resp := tp.ok("guest-fsfreeze-status", "", &st)
	if st != "frozen" || resp.FreezeState != pb.FreezeState_FREEZE_STATE_FROZEN {
		t.Fatalf("status: %q %v", st, resp.FreezeState)
	}
	tp.fails("guest-get-time", "", sdk.ClassCommandNotFound, "Command guest-get-time has been disabled: the agent is in frozen state")
	var n int
	tp.ok("guest-fsfreeze-thaw", "", &n)
	tp.ok("guest-get-time", "", nil)
}

func TestFsfreezeArguments(t *testing.T) {
	tp := newTestPlugin(t, map[string]any{"proc_root": fakeProc(t)})
	tp.fails("guest-fsfreeze-freeze-list", `{"mountpoints":"x"}`, generic, "Invalid parameter type for 'mountpoints', expected: array")
	tp.fails("guest-fsfreeze-freeze-list", `{"mountpoints":[1]}`, generic, "Invalid parameter type for 'mountpoints[0]', expected: string")
	tp.fails("guest-fsfreeze-freeze", `{"mountpoints":[]}`, generic, "Parameter 'mountpoints' is unexpected")
	tp.fails("guest-fsfreeze-status", `{"x":1}`, generic, "Parameter 'x' is unexpected")
}

func TestMountinfoParsing(t *testing.T) {
	dir := t.TempDir()
	// A block device node for the btrfs line: the test's own, under /dev.
	lines := []string{
		"21 26 0:20 / /proc rw,relatime - proc proc rw",
		"26 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
		`30 26 254:16 / /mnt/with\040space rw shared:1 - xfs /dev/vdb rw`,
		"31 26 254:0 /sub /bind rw - ext4 /dev/vda rw", // bind mount: same device
		"32 26 0:40 / /tmp rw - tmpfs tmpfs rw",
		"33 26 0:41 / /btr rw - btrfs " + dir + " rw", // major 0 and not a block device
		"garbage",
		"34 26 7:3 / /srv/a\\134b rw - ext4 /dev/loop3 rw",
	}
	tp := newTestPlugin(t, map[string]any{"proc_root": fakeProc(t, lines...)})
	got, err := tp.sys.mounts(true)
	if err != nil {
		t.Fatal(err)
	}
	want := []fsMount{
		{"/", "ext4", 254, 0},
		{"/mnt/with space", "xfs", 254, 16},
		{`/srv/a\b`, "ext4", 7, 3},
	}
	// fsinfo and fstrim see the bind mount too, as qemu-ga lists it.
	all, err := tp.sys.mounts(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 4 || all[2] != (fsMount{"/bind", "ext4", 254, 0}) {
		t.Fatalf("every mount point: %+v", all)
	}
	if len(got) != len(want) {
		t.Fatalf("mounts: %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mount %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestFsfreezeCommandSpecs(t *testing.T) {
	p := newSystem().plugin()
	allowed := map[string]bool{}
	noResponse := map[string]bool{}
	for _, c := range p.Info().Commands {
		if c.AllowedWhileFrozen {
			allowed[c.Name] = true
		}
		if !c.SuccessResponse {
			noResponse[c.Name] = true
		}
		if !json.Valid([]byte(c.ArgsSchema)) {
			t.Errorf("%s: invalid args schema %s", c.Name, c.ArgsSchema)
		}
		if strings.TrimSpace(c.Description) == "" {
			t.Errorf("%s: no description", c.Name)
		}
	}
	// qemu-ga's ga_freeze_allowlist, minus the core commands.
	if len(allowed) != 2 || !allowed["guest-fsfreeze-status"] || !allowed["guest-fsfreeze-thaw"] {
		t.Errorf("allowed while frozen: %v", allowed)
	}
	for _, c := range []string{"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"} {
		if !noResponse[c] {
			t.Errorf("%s should send no success response", c)
		}
	}
	if len(noResponse) != 4 {
		t.Errorf("no-response commands: %v", noResponse)
	}
}

// Concurrent freezes are serialised: one freezes, the other finds the
// guest frozen, and a single thaw undoes it.
func TestFsfreezeConcurrentFreezes(t *testing.T) {
	fs := mountTestFS(t)
	tp := newTestPlugin(t, map[string]any{"proc_root": fakeProc(t, fs.mountinfo)})
	results := make(chan *pb.RunResponse, 2)
	for i := 0; i < 2; i++ {
		go func() { results <- tp.run("guest-fsfreeze-freeze", "") }()
	}
	frozen, refused := 0, 0
	for i := 0; i < 2; i++ {
		r := <-results
		switch {
		case r.Error == nil && string(r.ResultJson) == "1":
			frozen++
		case r.Error != nil && r.Error.Class == sdk.ClassCommandNotFound:
			refused++
		default:
			t.Errorf("unexpected reply %s %v", r.ResultJson, r.Error)
		}
	}
	if frozen != 1 || refused != 1 {
		t.Fatalf("%d froze, %d refused; want 1 and 1", frozen, refused)
	}
	var n int
	tp.ok("guest-fsfreeze-thaw", "", &n)
	if n != 1 {
		t.Fatalf("thaw: %d", n)
	}
	select {
	case err := <-startWrite(filepath.Join(fs.mnt, "f")):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still frozen after one thaw")
	}
}

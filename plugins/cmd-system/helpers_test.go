package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// testPlugin is one configured plugin instance and its runtime directory.
type testPlugin struct {
	t          *testing.T
	sys        *system
	p          *sdk.CommandPlugin
	runtimeDir string
}

// newTestPlugin builds and configures a plugin the way the supervisor does,
// with the given options (nil: defaults) and a fresh runtime directory.
func newTestPlugin(t *testing.T, opts map[string]any) *testPlugin {
	t.Helper()
	return newTestPluginState(t, opts, t.TempDir())
}

func newTestPluginState(t *testing.T, opts map[string]any, runtimeDir string) *testPlugin {
	t.Helper()
	s := newSystem()
	p := s.plugin()
	var raw []byte
	if opts != nil {
		var err error
		if raw, err = json.Marshal(opts); err != nil {
			t.Fatal(err)
		}
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "cmd-system", Level: hclog.Warn, Output: testWriter{t}})
	if err := p.Configure(sdk.Config{Options: raw, RuntimeDir: runtimeDir, Logger: logger}); err != nil {
		t.Fatalf("configure: %v", err)
	}
	return &testPlugin{t: t, sys: s, p: p, runtimeDir: runtimeDir}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// run sends one request through the plugin's Run, the data plane's path.
func (tp *testPlugin) run(command, args string) *pb.RunResponse {
	tp.t.Helper()
	if args == "" {
		args = "{}"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return tp.p.Run(ctx, &pb.RunRequest{Command: command, ArgsJson: []byte(args)})
}

// ok runs a command that must succeed and decodes its result into out
// (when not nil).
func (tp *testPlugin) ok(command, args string, out any) *pb.RunResponse {
	tp.t.Helper()
	resp := tp.run(command, args)
	if resp.Error != nil {
		tp.t.Fatalf("%s %s: unexpected error %s: %s", command, args, resp.Error.Class, resp.Error.Desc)
	}
	if out != nil {
		if err := json.Unmarshal(resp.ResultJson, out); err != nil {
			tp.t.Fatalf("%s: decode %s: %v", command, resp.ResultJson, err)
		}
	}
	return resp
}

// fails runs a command that must fail with the given class and text.
func (tp *testPlugin) fails(command, args, class, desc string) {
	tp.t.Helper()
	resp := tp.run(command, args)
	if resp.Error == nil {
		tp.t.Fatalf("%s %s: succeeded with %s, want error %q", command, args, resp.ResultJson, desc)
	}
	if resp.Error.Class != class || resp.Error.Desc != desc {
		tp.t.Fatalf("%s %s: error %s %q, want %s %q", command, args, resp.Error.Class, resp.Error.Desc, class, desc)
	}
}

// failsPrefix is fails for texts that end with something host-specific.
func (tp *testPlugin) failsPrefix(command, args, prefix string) string {
	tp.t.Helper()
	resp := tp.run(command, args)
	if resp.Error == nil {
		tp.t.Fatalf("%s %s: succeeded with %s, want error %q...", command, args, resp.ResultJson, prefix)
	}
	if !strings.HasPrefix(resp.Error.Desc, prefix) {
		tp.t.Fatalf("%s %s: error %q, want prefix %q", command, args, resp.Error.Desc, prefix)
	}
	return resp.Error.Desc
}

const generic = sdk.ClassGenericError

// writeFile writes a file, creating its directory.
func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// writeScript writes an executable /bin/sh script.
func writeScript(t *testing.T, path, body string) string {
	t.Helper()
	writeFile(t, path, "#!/bin/sh\n"+body+"\n", 0o755)
	return path
}

// recorder writes a script that records its arguments, one per line, and its
// stdin into files next to it, then exits with the given status after
// printing msg.
func recorder(t *testing.T, dir, name string, status int, msg string) (script, argsFile, stdinFile string) {
	t.Helper()
	argsFile = filepath.Join(dir, name+".args")
	stdinFile = filepath.Join(dir, name+".stdin")
	msgFile := filepath.Join(dir, name+".msg")
	writeFile(t, msgFile, msg, 0o644)
	body := fmt.Sprintf(`: > %[1]q
for a in "$@"; do printf '%%s\n' "$a" >> %[1]q; done
cat > %[2]q
cat %[3]q
exit %[4]d`, argsFile, stdinFile, msgFile, status)
	script = writeScript(t, filepath.Join(dir, name), body)
	return script, argsFile, stdinFile
}

// readLines returns a file's lines; nil when the file does not exist.
func readLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSuffix(string(data), "\n")
	if s == "" {
		return []string{}
	}
	return strings.Split(s, "\n")
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CI runs as root)")
	}
}

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return p
}

// testFS is an ext4 image the test made, loop-mounted.
type testFS struct {
	mnt          string
	major, minor uint32
	mountinfo    string // its line of /proc/self/mountinfo
}

// mountTestFS creates and loop-mounts a small ext4 filesystem; the cleanup
// thaws it (whatever the test did), unmounts it and frees the loop device.
func mountTestFS(t *testing.T) *testFS {
	t.Helper()
	requireRoot(t)
	requireTool(t, "mkfs.ext4")
	requireTool(t, "mount")
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("loop mount not possible here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		thawDirect(mnt)
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	fs := &testFS{mnt: mnt}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if e, ok := parseMountinfoLine(line); ok && e.dir == mnt {
			fs.major, fs.minor, fs.mountinfo = e.major, e.minor, line
		}
	}
	if fs.mountinfo == "" {
		t.Fatalf("%s not in mountinfo", mnt)
	}
	return fs
}

// thawDirect thaws a mountpoint with FITHAW until it says it is not frozen:
// the safety net of every freezing test.
func thawDirect(dir string) {
	fd, err := unix.Open(dir, unix.O_RDONLY, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	for i := 0; i < 16; i++ {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlFITHAW, 0); errno != 0 {
			return
		}
	}
}

// fakeProc makes a procfs stand-in whose self/mountinfo holds only the given
// lines: freeze, thaw and trim then touch nothing but the test's own mounts.
func fakeProc(t *testing.T, mountinfo ...string) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "self", "mountinfo"), strings.Join(mountinfo, "\n")+"\n", 0o644)
	return dir
}

package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
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

// Issue 9, items 1 and 2: the confinement of cmd-exec and cmd-files over the
// real agent, against a real shared object, real symlinks and a real
// unprivileged user (uid 65534).

const nobodyID = 65534

func needRootAndGCC(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root (files of another user, a helper run as uid 65534)")
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc is not installed")
	}
}

// openTempDir is a temporary directory anybody may traverse (t.TempDir's
// are 0700), owned by root.
func openTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gaconf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func gcc(t *testing.T, out, src string, args ...string) {
	t.Helper()
	cfile := out + ".c"
	if err := os.WriteFile(cfile, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("gcc", append(append([]string{"-O2", "-o", out}, args...), cfile)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
}

// qga sends one command and returns its result or error.
func qga(t *testing.T, c *harness.Conn, cmd string, args any) (json.RawMessage, string) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := harness.Decode(t, call(t, c, string(b)))
	if r.Error != nil {
		return nil, r.Error.Desc
	}
	return r.Return, ""
}

func mustQGA(t *testing.T, c *harness.Conn, cmd string, args any, v any) {
	t.Helper()
	ret, desc := qga(t, c, cmd, args)
	if desc != "" {
		t.Fatalf("%s %v: %s", cmd, args, desc)
	}
	if v != nil {
		if err := json.Unmarshal(ret, v); err != nil {
			t.Fatalf("%s: %s: %v", cmd, ret, err)
		}
	}
}

// execStatus runs guest-exec-status until the process has exited.
func execWait(t *testing.T, c *harness.Conn, pid int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st map[string]any
		mustQGA(t, c, "guest-exec-status", map[string]any{"pid": pid}, &st)
		if st["exited"] == true {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not exit", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// execOut runs a guest-exec to its end and returns its stdout, or the
// error that refused it.
func execOut(t *testing.T, c *harness.Conn, args map[string]any) (string, string) {
	t.Helper()
	args["capture-output"] = true
	ret, desc := qga(t, c, "guest-exec", args)
	if desc != "" {
		return "", desc
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(ret, &started); err != nil {
		t.Fatal(err)
	}
	st := execWait(t, c, started.PID)
	s, _ := st["out-data"].(string)
	out, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(out), ""
}

// Item 1: the host writes a real shared object through cmd-files (where it
// may write) and runs an allowed program with LD_PRELOAD naming it. The
// constructor must not run; allowed variables still pass.
func TestConfinedExecRefusesLDPreload(t *testing.T) {
	needRootAndGCC(t)
	base := openTempDir(t)
	exchange := filepath.Join(base, "exchange")
	if err := os.Mkdir(exchange, 0o755); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(base, "constructor-ran")
	so := filepath.Join(base, "preload.so")
	gcc(t, so, fmt.Sprintf(`#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void owned(void) {
	int fd = open(%q, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd >= 0) { write(fd, "ran\n", 4); close(fd); }
}
`, marker), "-shared", "-fPIC")
	soBytes, err := os.ReadFile(so)
	if err != nil {
		t.Fatal(err)
	}

	a, sock := startAgentConfig(t, fmt.Sprintf(`
plugin "cmd-files" {
  options = { allowed_paths = [%q] }
}
plugin "cmd-exec" {
  options = { allowed_paths = ["/usr/bin/true", "/usr/bin/env"] }
}`, exchange))
	c := harness.MustDial(t, sock)

	// The host writes the object where cmd-files lets it (mode 0666).
	planted := filepath.Join(exchange, "x.so")
	var h int64
	mustQGA(t, c, "guest-file-open", map[string]any{"path": planted, "mode": "w"}, &h)
	mustQGA(t, c, "guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(soBytes)}, nil)
	mustQGA(t, c, "guest-file-close", map[string]any{"handle": h}, nil)
	// It works: the loader runs its constructor for whoever preloads it.
	direct := exec.Command("/usr/bin/true")
	direct.Env = []string{"LD_PRELOAD=" + planted}
	if err := direct.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the planted object's constructor does not run even outside the agent: %v", err)
	}
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}

	for _, env := range [][]string{
		{"LD_PRELOAD=" + planted},
		{"PATH=/usr/bin", "LD_PRELOAD=" + planted},
		{"LD_AUDIT=" + planted},
		{"LD_LIBRARY_PATH=" + exchange},
		{"GCONV_PATH=" + exchange},
		{"BASH_ENV=" + planted},
	} {
		last := env[len(env)-1]
		name := last[:strings.IndexByte(last, '=')]
		out, desc := execOut(t, c, map[string]any{"path": "/usr/bin/true", "env": env})
		want := fmt.Sprintf("guest-exec of '/usr/bin/true' refused: environment variable '%s' changes the code a program loads or runs; cmd-exec passes it only when allowed_env names it", name)
		if desc != want {
			t.Errorf("env %v: ran (%q) or %q, want %q", env, out, desc, want)
		}
	}
	if out, desc := execOut(t, c, map[string]any{"path": "/usr/bin/env", "env": []string{"FOO=1"}}); desc != "guest-exec of '/usr/bin/env' refused: environment variable 'FOO' is not in the allowed_env of cmd-exec" {
		t.Errorf("FOO: %q %q", out, desc)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the planted object's constructor ran inside a confined guest-exec")
	}
	// What allowed_env lets through by default reaches the child verbatim.
	env := []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "LC_ALL=C", "TZ=UTC0", "TERM=dumb", "HOME=/root", "USER=root", "LOGNAME=root"}
	if out, desc := execOut(t, c, map[string]any{"path": "/usr/bin/env", "env": env}); desc != "" || out != strings.Join(env, "\n")+"\n" {
		t.Errorf("allowed env: %q %q", out, desc)
	}
	// Without env the child has the plugin's environment: what the agent
	// gave the plugin, nothing of the host's.
	out, desc := execOut(t, c, map[string]any{"path": "/usr/bin/env"})
	if desc != "" {
		t.Fatal(desc)
	}
	t.Logf("a confined child without env sees: %q", out)
	for _, kv := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(kv, "LD_") {
			t.Errorf("inherited %s", kv)
		}
	}
	if !strings.Contains(a.Log.String(), "guest-exec refused by allowed_env") {
		t.Errorf("the refusal is not logged")
	}
}

// Item 1: dir/link/../tool passed the lexical check while the kernel ran the
// tool beside link's target; a swapped directory symlink cannot bring in
// another program either.
func TestConfinedExecResolvesPaths(t *testing.T) {
	needRootAndGCC(t)
	base := openTempDir(t)
	dir, other := filepath.Join(base, "dir"), filepath.Join(base, "other")
	for _, d := range []string{dir, other + "/sub"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ran := filepath.Join(base, "other-ran")
	for path, body := range map[string]string{
		dir + "/tool":   "#!/bin/sh\necho allowed \"$@\"\n",
		other + "/tool": "#!/bin/sh\ntouch " + ran + "\necho OTHER\n",
	} {
		if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(other+"/sub", dir+"/link"); err != nil {
		t.Fatal(err)
	}
	_, sock := startAgentConfig(t, fmt.Sprintf(`
plugin "cmd-exec" {
  options = { allowed_paths = [%q, "/usr/bin/echo"] }
}`, dir+"/tool"))
	c := harness.MustDial(t, sock)
	// "/bin/../usr/bin/echo" is /usr/bin/echo to filepath.Clean, but /bin
	// leads to /usr/bin, whose ".." is /usr: the kernel finds no
	// /usr/usr/bin.
	for _, path := range []string{dir + "/link/../tool", other + "/tool", dir + "/link/../../other/tool", "/bin/../usr/bin/echo"} {
		out, desc := execOut(t, c, map[string]any{"path": path})
		if want := fmt.Sprintf("guest-exec of '%s' refused: not in the allowed_paths of cmd-exec", path); desc != want {
			t.Errorf("%s: ran (%q) or %q, want %q", path, out, desc, want)
		}
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the other tool ran")
	}
	for path, want := range map[string]string{
		dir + "/tool":                   "allowed x\n",
		dir + "/link/../../dir/tool":    "allowed x\n",
		"/usr/bin/../bin/./echo":        "x\n",
		base + "/dir/link/../sub/../..": "",
	} {
		out, desc := execOut(t, c, map[string]any{"path": path, "arg": []string{"x"}})
		if want == "" {
			if desc == "" {
				t.Errorf("%s ran: %q", path, out)
			}
			continue
		}
		if desc != "" || out != want {
			t.Errorf("%s: %q %q, want %q", path, out, desc, want)
		}
	}

	// An unprivileged user swaps a symlink of theirs between the allowed
	// directory and one of their own with another "tool", while the host
	// runs <link>/tool: the tool run is the allowed one, every time.
	userDir := filepath.Join(base, "user")
	if err := os.Mkdir(userDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(userDir, nobodyID, nobodyID); err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(userDir, "evil")
	if err := os.Mkdir(evil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(evil+"/tool", []byte("#!/bin/sh\ntouch "+ran+"\necho EVIL\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, userDir+"/link"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(evil, userDir+"/other"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{evil, evil + "/tool", userDir + "/link", userDir + "/other"} {
		if err := os.Lchown(p, nobodyID, nobodyID); err != nil {
			t.Fatal(err)
		}
	}
	stop := startSwapper(t, base, userDir+"/link", userDir+"/other")
	allowed, refused := 0, 0
	for range 300 {
		out, desc := execOut(t, c, map[string]any{"path": userDir + "/link/tool", "arg": []string{"x"}})
		switch {
		case desc != "":
			refused++
		case out == "allowed x\n":
			allowed++
		default:
			t.Fatalf("ran %q", out)
		}
	}
	swaps := stop()
	t.Logf("300 guest-exec of a swapped link during %d swaps: %d ran the allowed tool, %d refused, 0 ran another", swaps, allowed, refused)
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the user's tool ran")
	}
	if allowed == 0 || refused == 0 || swaps < 100 {
		t.Fatalf("the race did not happen: %d allowed, %d refused, %d swaps", allowed, refused, swaps)
	}
}

// startSwapper runs, as uid 65534, a program that exchanges a and b
// (renameat2 RENAME_EXCHANGE) as fast as it can; stop ends it and returns
// how many swaps it made.
func startSwapper(t *testing.T, dir, a, b string) (stop func() int) {
	t.Helper()
	bin := filepath.Join(dir, "swapper")
	gcc(t, bin, `#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
int main(int argc, char **argv) {
	if (argc != 3) return 2;
	signal(SIGTERM, on_term);
	long n = 0;
	while (!stop)
		if (renameat2(AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE) == 0)
			n++;
	printf("%ld\n", n);
	return 0;
}
`)
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, a, b)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyID, Gid: nobodyID}}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := false
	stop = func() int {
		if done {
			return 0
		}
		done = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("swapper: %v: %s", err, out.String())
		}
		n, err := strconv.Atoi(strings.TrimSpace(out.String()))
		if err != nil {
			t.Fatalf("swapper printed %q", out.String())
		}
		return n
	}
	t.Cleanup(func() { stop() })
	time.Sleep(50 * time.Millisecond)
	return stop
}

// Item 2: a root an unprivileged user planted (a symlink at its name, or
// the directory itself) is refused when cmd-files starts, with the reason.
func TestFilesRefusesPlantedRoots(t *testing.T) {
	needRootAndGCC(t)
	base := openTempDir(t)
	target := filepath.Join(base, "etc-like")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target+"/shadow", []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The README's old example: a directory of /var/tmp, made by a user.
	userRoot := filepath.Join(base, "exchange")
	if err := os.Mkdir(userRoot, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(userRoot, nobodyID, nobodyID); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "planted")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, nobodyID, nobodyID); err != nil {
		t.Fatal(err)
	}
	for root, reason := range map[string]string{
		link:     fmt.Sprintf("%q is a symbolic link owned by uid %d", link, nobodyID),
		userRoot: fmt.Sprintf("%q is owned by uid %d", userRoot, nobodyID),
	} {
		a, sock := startAgentConfig(t, fmt.Sprintf(`
plugin "cmd-files" {
  options = { allowed_paths = [%q] }
}`, root))
		c := harness.MustDial(t, sock)
		want := fmt.Sprintf("allowed_paths: refusing %q: %s, so a user other than root could change which directory it names (allow_unsafe_roots = true accepts that)", root, reason)
		for _, path := range []string{root + "/shadow", root + "/new", root} {
			t0 := time.Now()
			_, desc := qga(t, c, "guest-file-open", map[string]any{"path": path, "mode": "r"})
			if !strings.Contains(desc, want) {
				t.Errorf("root %s, open %s: %q, want it to say %q", root, path, desc, want)
			}
			// Refused at once: the plugin runs, only that root is refused.
			if d := time.Since(t0); d > 3*time.Second {
				t.Errorf("the refusal took %s", d)
			}
		}
		// Files elsewhere are still refused as outside, at once.
		_, desc := qga(t, c, "guest-file-open", map[string]any{"path": target + "/shadow", "mode": "r"})
		if !strings.Contains(desc, "the path is outside the allowed paths") {
			t.Errorf("open outside: %q", desc)
		}
		if !strings.Contains(a.Log.String(), "refusing") {
			t.Errorf("the refusal is not in the agent's log")
		}
	}
}

// Item 2: the race of the issue, by an unprivileged user. The user owns the
// root's entry and exchanges it, as fast as it goes, with a symlink to a
// directory outside, while the host opens and reads a file beneath the
// root thousands of times. The administrator accepted that root with
// allow_unsafe_roots; the tree is still the one opened at start: not one
// read comes from outside. (Before: 2,756 of 7,674 opens did.)
func TestFilesRootSwapRaceByUnprivilegedUser(t *testing.T) {
	needRootAndGCC(t)
	base := openTempDir(t)
	userDir := filepath.Join(base, "user")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{userDir, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(outside+"/file", []byte("OUTSIDE"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(userDir, "exchange")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root+"/file", []byte("inside"), 0o644); err != nil {
		t.Fatal(err)
	}
	swap := filepath.Join(userDir, "swap")
	if err := os.Symlink(outside, swap); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{userDir, root, root + "/file", swap} {
		if err := os.Lchown(p, nobodyID, nobodyID); err != nil {
			t.Fatal(err)
		}
	}
	a, sock := startAgentConfig(t, fmt.Sprintf(`
plugin "cmd-files" {
  options = { allowed_paths = [%q], allow_unsafe_roots = true }
}`, root))
	c := harness.MustDial(t, sock)
	read := func() (string, bool) {
		ret, desc := qga(t, c, "guest-file-open", map[string]any{"path": root + "/file", "mode": "r"})
		if desc != "" {
			return desc, false
		}
		h := strings.TrimSpace(string(ret))
		var r struct {
			Buf string `json:"buf-b64"`
		}
		mustQGA(t, c, "guest-file-read", map[string]any{"handle": json.RawMessage(h)}, &r)
		mustQGA(t, c, "guest-file-close", map[string]any{"handle": json.RawMessage(h)}, nil)
		data, err := base64.StdEncoding.DecodeString(r.Buf)
		if err != nil {
			t.Fatal(err)
		}
		return string(data), true
	}
	// The plugin starts (and opens its root) on this first open.
	if s, ok := read(); !ok || s != "inside" {
		t.Fatalf("first read: %q", s)
	}
	if log := a.Log.String(); !strings.Contains(log, "allowed path") || !strings.Contains(log, "resolved="+root) {
		t.Errorf("the agent's log does not say what the root resolved to")
	}

	stop := startSwapper(t, base, root, swap)
	const opens = 3000
	inside, out, refused := 0, 0, 0
	for range opens {
		s, ok := read()
		switch {
		case !ok:
			refused++
		case s == "inside":
			inside++
		case s == "OUTSIDE":
			out++
		default:
			t.Fatalf("read %q", s)
		}
	}
	swaps := stop()
	t.Logf("%d opens during %d swaps by uid %d: %d read inside, %d read outside, %d refused", opens, swaps, nobodyID, inside, out, refused)
	if out != 0 {
		t.Fatalf("%d of %d opens read outside the allowed root", out, opens)
	}
	if inside == 0 || refused == 0 || swaps < 1000 {
		t.Fatalf("the race did not happen: %d inside, %d refused, %d swaps", inside, refused, swaps)
	}
}

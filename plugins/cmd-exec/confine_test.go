package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildPreload compiles a real shared object whose constructor creates
// marker, and checks that the dynamic loader does run it: the refusals below
// are then refusals of something that works.
func buildPreload(t *testing.T, dir, marker string) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc is not installed")
	}
	src := filepath.Join(dir, "preload.c")
	so := filepath.Join(dir, "preload.so")
	code := fmt.Sprintf(`#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void owned(void) {
	int fd = open(%q, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd >= 0) { write(fd, "ran\n", 4); close(fd); }
}
`, marker)
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", so, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	cmd := exec.Command("/usr/bin/true")
	cmd.Env = []string{"LD_PRELOAD=" + so}
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the preloaded constructor did not run outside the agent: %v", err)
	}
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}
	return so
}

// execOutcome runs a guest-exec that may be refused; when it starts, it
// waits for the end so that whatever it did is done.
func (a *testAgent) execOutcome(args string) (map[string]any, string) {
	a.t.Helper()
	out, e := a.call("guest-exec", args)
	if e != nil {
		if e.Class != "GenericError" {
			a.t.Fatalf("guest-exec %s: class %s", args, e.Class)
		}
		return nil, e.Desc
	}
	return a.wait(int64(out["pid"].(float64))), ""
}

// Issue 9, item 1: with allowed_paths set, the host wrote a shared object
// where cmd-files lets it write and ran an allowed program with
// LD_PRELOAD: the constructor ran as root.
func TestExecEnvLDPreloadRefused(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "owned")
	so := buildPreload(t, dir, marker)
	a := newTestAgent(t, `{"allowed_paths":["/usr/bin/true","/usr/bin/env"]}`)
	for i, env := range [][]string{
		{"LD_PRELOAD=" + so},
		{"PATH=/usr/bin:/bin", "LD_PRELOAD=" + so},
		{"LD_AUDIT=" + so},
		{"LD_LIBRARY_PATH=" + dir},
	} {
		name := env[len(env)-1][:strings.IndexByte(env[len(env)-1], '=')]
		_, desc := a.execOutcome(jsonArgs(t, map[string]any{"path": "/usr/bin/true", "env": env}))
		want := fmt.Sprintf("guest-exec of '/usr/bin/true' refused: environment variable '%s' changes the code a program loads or runs; cmd-exec passes it only when allowed_env names it", name)
		if desc != want {
			t.Errorf("env %d %v: got %q, want %q", i, env, desc, want)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("env %v: the preloaded constructor ran in a confined guest-exec", env)
		}
	}
}

// The environment a confined guest-exec may set: allowed_env's default list
// (with LC_*), loader and interpreter variables refused by name, values of
// locale and time zone variables that name files refused.
func TestExecEnvConfined(t *testing.T) {
	a := newTestAgent(t, `{"allowed_paths":["/usr/bin/env"]}`)
	pass := []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "LANGUAGE=de:en", "LC_ALL=C", "LC_MESSAGES=C",
		"TZ=Europe/Paris", "TZ=:Europe/Paris", "TZ=UTC0", "TERM=xterm", "HOME=/root", "USER=root", "LOGNAME=root"}
	for _, kv := range pass {
		st, desc := a.execOutcome(jsonArgs(t, map[string]any{"path": "/usr/bin/env", "env": []string{kv}, "capture-output": true}))
		if desc != "" {
			t.Errorf("%s refused: %s", kv, desc)
			continue
		}
		if got := decoded(t, st, "out-data"); got != kv+"\n" {
			t.Errorf("%s: the child saw %q", kv, got)
		}
	}
	// An empty environment is fine.
	if st, desc := a.execOutcome(`{"path":"/usr/bin/env","env":[],"capture-output":true}`); desc != "" || st["out-data"] != nil {
		t.Errorf("empty env: %v %q", st, desc)
	}
	prefix := "guest-exec of '/usr/bin/env' refused: "
	loader := func(name string) string {
		return prefix + "environment variable '" + name + "' changes the code a program loads or runs; cmd-exec passes it only when allowed_env names it"
	}
	notListed := func(name string) string {
		return prefix + "environment variable '" + name + "' is not in the allowed_env of cmd-exec"
	}
	names := func(name string) string {
		return prefix + "environment variable '" + name + "' names a file; cmd-exec refuses that value"
	}
	for kv, want := range map[string]string{
		"GCONV_PATH=/tmp":                     loader("GCONV_PATH"),
		"GETCONF_DIR=/tmp":                    loader("GETCONF_DIR"),
		"GLIBC_TUNABLES=glibc.malloc.check=3": loader("GLIBC_TUNABLES"),
		"MALLOC_CHECK_=3":                     loader("MALLOC_CHECK_"),
		"HOSTALIASES=/tmp/h":                  loader("HOSTALIASES"),
		"LOCALDOMAIN=x":                       loader("LOCALDOMAIN"),
		"RES_OPTIONS=debug":                   loader("RES_OPTIONS"),
		"NLSPATH=/tmp/%N":                     loader("NLSPATH"),
		"LOCPATH=/tmp":                        loader("LOCPATH"),
		"TMPDIR=/tmp":                         loader("TMPDIR"),
		"TZDIR=/tmp":                          loader("TZDIR"),
		"PYTHONPATH=/tmp":                     loader("PYTHONPATH"),
		"PYTHONSTARTUP=/tmp/x.py":             loader("PYTHONSTARTUP"),
		"PERL5LIB=/tmp":                       loader("PERL5LIB"),
		"PERL5OPT=-Mx":                        loader("PERL5OPT"),
		"PERLLIB=/tmp":                        loader("PERLLIB"),
		"RUBYOPT=-rx":                         loader("RUBYOPT"),
		"NODE_OPTIONS=--require=/tmp/x.js":    loader("NODE_OPTIONS"),
		"BASH_ENV=/tmp/x":                     loader("BASH_ENV"),
		"BASH_FUNC_tar%%=() { id; }":          loader("BASH_FUNC_tar%%"),
		"ENV=/tmp/x":                          loader("ENV"),
		"IFS=/":                               loader("IFS"),
		"SHELLOPTS=xtrace":                    loader("SHELLOPTS"),
		"PS4=$(id)":                           loader("PS4"),
		"OPENSSL_CONF=/tmp/x.cnf":             loader("OPENSSL_CONF"),
		"GIT_SSH_COMMAND=id":                  loader("GIT_SSH_COMMAND"),
		"FOO=bar":                             notListed("FOO"),
		"LC=x":                                notListed("LC"),
		"LANG=/tmp/evil-locale":               names("LANG"),
		"LC_CTYPE=../../tmp/x":                names("LC_CTYPE"),
		"LANGUAGE=../x":                       names("LANGUAGE"),
		"TZ=/tmp/evil-zone":                   names("TZ"),
		"TZ=:/tmp/evil-zone":                  names("TZ"),
		"TZ=../../../tmp/evil-zone":           names("TZ"),
		"NOEQUALS":                            prefix + "env[0] 'NOEQUALS' is not NAME=VALUE",
		"=value":                              prefix + "env[0] '=value' is not NAME=VALUE",
	} {
		if _, desc := a.execOutcome(jsonArgs(t, map[string]any{"path": "/usr/bin/env", "env": []string{kv}})); desc != want {
			t.Errorf("%s: got %q, want %q", kv, desc, want)
		}
	}

	// allowed_env replaces the default list: exact names and NAME* patterns.
	// A pattern never admits a loader variable; its exact name does.
	a = newTestAgent(t, `{"allowed_paths":["/usr/bin/env"],"allowed_env":["FOO","APP_*","LD_LIBRARY_PATH","*"]}`)
	for _, kv := range []string{"FOO=1", "APP_MODE=x", "LD_LIBRARY_PATH=/usr/lib", "ANYTHING=1", "PATH=/bin"} {
		if st, desc := a.execOutcome(jsonArgs(t, map[string]any{"path": "/usr/bin/env", "env": []string{kv}, "capture-output": true})); desc != "" || decoded(t, st, "out-data") != kv+"\n" {
			t.Errorf("%s with allowed_env: %v %q", kv, st, desc)
		}
	}
	for _, kv := range []string{"LD_PRELOAD=/x.so", "PYTHONPATH=/x", "BASH_FUNC_x%%=() { id; }"} {
		name := kv[:strings.IndexByte(kv, '=')]
		if _, desc := a.execOutcome(jsonArgs(t, map[string]any{"path": "/usr/bin/env", "env": []string{kv}})); desc != loader(name) {
			t.Errorf("%s with a pattern: %q", kv, desc)
		}
	}
	a = newTestAgent(t, `{"allowed_paths":["/usr/bin/env"],"allowed_env":[]}`)
	if _, desc := a.execOutcome(`{"path":"/usr/bin/env","env":["PATH=/bin"]}`); desc != notListed("PATH") {
		t.Errorf("allowed_env = []: %q", desc)
	}
	if _, desc := a.execOutcome(`{"path":"/usr/bin/env","env":[]}`); desc != "" {
		t.Errorf("allowed_env = [] with an empty env: %q", desc)
	}

	// Without allowed_paths (and allowed_env) env is passed verbatim, as
	// qemu-ga does: whoever may run any program may set any variable.
	a = newTestAgent(t, "")
	if st, desc := a.execOutcome(`{"path":"/usr/bin/env","env":["FOO=1","TZ=/x"],"capture-output":true}`); desc != "" || decoded(t, st, "out-data") != "FOO=1\nTZ=/x\n" {
		t.Errorf("unconfined env: %v %q", st, desc)
	}
	// allowed_env alone confines the environment.
	a = newTestAgent(t, `{"allowed_env":["FOO"]}`)
	if _, desc := a.execOutcome(`{"path":"/usr/bin/env","env":["BAR=1"]}`); desc != prefix+"environment variable 'BAR' is not in the allowed_env of cmd-exec" {
		t.Errorf("allowed_env without allowed_paths: %q", desc)
	}
}

// Issue 9, item 1: the check was lexical (filepath.Clean), so dir/link/../tool
// passed while the kernel ran the tool beside link's target.
func TestExecAllowedPathsResolved(t *testing.T) {
	base := t.TempDir()
	dir, other := filepath.Join(base, "dir"), filepath.Join(base, "other")
	for _, d := range []string{dir, other + "/sub"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeScript(t, dir, "tool", "#!/bin/sh\necho allowed \"$@\"\n", 0o755)
	writeScript(t, other, "tool", "#!/bin/sh\necho OTHER\n", 0o755)
	if err := os.Symlink(other+"/sub", dir+"/link"); err != nil {
		t.Fatal(err)
	}
	// A binary (not a script) too, and a symlink to it under another name.
	echo := filepath.Join(dir, "echo")
	data, err := os.ReadFile("/usr/bin/echo")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(echo, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(echo, other+"/sh"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, base+"/dir-alias"); err != nil {
		t.Fatal(err)
	}
	a := newTestAgent(t, jsonArgs(t, map[string]any{"allowed_paths": []string{dir + "/tool", echo}}))

	refused := func(path string) {
		t.Helper()
		st, desc := a.execOutcome(jsonArgs(t, map[string]any{"path": path, "capture-output": true}))
		want := fmt.Sprintf("guest-exec of '%s' refused: not in the allowed_paths of cmd-exec", path)
		if desc != want {
			t.Errorf("%s: ran %v / %q, want %q", path, st, desc, want)
		}
	}
	refused(dir + "/link/../tool") // the kernel's dir/link/.. is other
	refused(other + "/tool")
	refused(other + "/sh") // the allowed binary under another name (argv[0])
	refused(dir + "/link/../../dir/../other/tool")

	runs := func(path, want string) {
		t.Helper()
		st, desc := a.execOutcome(jsonArgs(t, map[string]any{"path": path, "arg": []string{"x"}, "capture-output": true}))
		if desc != "" {
			t.Errorf("%s refused: %s", path, desc)
			return
		}
		if got := decoded(t, st, "out-data"); got != want {
			t.Errorf("%s printed %q, want %q", path, got, want)
		}
	}
	runs(dir+"/tool", "allowed x\n")
	runs(base+"/dir-alias/tool", "allowed x\n")     // a symlinked directory to the same place
	runs(dir+"/link/../../dir/tool", "allowed x\n") // .. the kernel's way, landing on dir
	runs(echo, "x\n")
	runs(dir+"/./echo", "x\n")
}

// What is executed is what was checked: the directory is held open from
// the check to the exec, so swapping a symlink in between cannot win.
func TestExecCheckedDirectoryIsExecuted(t *testing.T) {
	base := t.TempDir()
	good, evil := filepath.Join(base, "good"), filepath.Join(base, "evil")
	marker := filepath.Join(base, "evil-ran")
	for _, d := range []string{good, evil} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile("/usr/bin/echo")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good+"/tool", data, 0o755); err != nil {
		t.Fatal(err)
	}
	writeScript(t, evil, "tool", "#!/bin/sh\ntouch "+marker+"\necho EVIL\n", 0o755)
	link := filepath.Join(base, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	a := newTestAgent(t, jsonArgs(t, map[string]any{"allowed_paths": []string{good + "/tool"}}))
	swaps := 0
	a.ex.testHookChecked = func() {
		swaps++
		if err := os.Remove(link); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(evil, link); err != nil {
			t.Error(err)
		}
	}
	st, desc := a.execOutcome(jsonArgs(t, map[string]any{"path": link + "/tool", "arg": []string{"good"}, "capture-output": true}))
	if desc != "" {
		t.Fatalf("refused: %s", desc)
	}
	if swaps != 1 {
		t.Fatalf("the hook ran %d times", swaps)
	}
	if got := decoded(t, st, "out-data"); got != "good\n" {
		t.Fatalf("printed %q: the swapped-in program ran", got)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the swapped-in program ran")
	}
	// argv[0] is the path as given.
	a.ex.testHookChecked = nil
	writeScript(t, good, "argv0", "#!/bin/sh\necho \"$0\"\n", 0o755)
	a = newTestAgent(t, jsonArgs(t, map[string]any{"allowed_paths": []string{good + "/argv0", "/usr/bin/sh"}}))
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	st, desc = a.execOutcome(jsonArgs(t, map[string]any{"path": "/usr/bin/sh", "arg": []string{"-c", `echo "$0"`}, "capture-output": true}))
	if desc != "" || decoded(t, st, "out-data") != "/usr/bin/sh\n" {
		t.Fatalf("argv[0] of a binary: %v %q", st, desc)
	}
	// A script gets the real path of the file that was checked as $0.
	st, desc = a.execOutcome(jsonArgs(t, map[string]any{"path": link + "/argv0", "capture-output": true}))
	if desc != "" || decoded(t, st, "out-data") != good+"/argv0\n" {
		t.Fatalf("$0 of a script: %v %q", st, desc)
	}
	// The child's comm is the program's name, not a descriptor number.
	a = newTestAgent(t, `{"allowed_paths":["/usr/bin/sleep"]}`)
	pid := a.exec(`{"path":"/usr/bin/sleep","arg":["5"]}`)
	var comm []byte
	waitFor(t, "sleep to be exec'd", 5*time.Second, func() bool {
		comm, _ = os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return string(comm) == "sleep\n"
	})
	// The checked directory does not reach the child (descriptors the test
	// process itself inherited without close-on-exec may).
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if fi, err := os.Stat(target); err == nil && fi.IsDir() {
			t.Errorf("the child holds descriptor %s → %s", fd.Name(), target)
		}
	}
}

func TestOptionsAllowedEnv(t *testing.T) {
	o, err := decodeOptions([]byte(`{"allowed_paths":["/bin/x"]}`))
	if err != nil || o.AllowedEnv == nil || strings.Join(*o.AllowedEnv, ",") != "PATH,LANG,LANGUAGE,LC_*,TZ,TERM,HOME,USER,LOGNAME" {
		t.Fatalf("default allowed_env with allowed_paths: %+v %v", o.AllowedEnv, err)
	}
	o, err = decodeOptions(nil)
	if err != nil || o.AllowedEnv != nil {
		t.Fatalf("allowed_env without allowed_paths: %+v %v", o.AllowedEnv, err)
	}
	o, err = decodeOptions([]byte(`{"allowed_paths":["/bin/x"],"allowed_env":[]}`))
	if err != nil || o.AllowedEnv == nil || len(*o.AllowedEnv) != 0 {
		t.Fatalf("allowed_env = []: %+v %v", o.AllowedEnv, err)
	}
	for _, bad := range []string{`{"allowed_env":["A=B"]}`, `{"allowed_env":[""]}`, `{"allowed_env":["A*B"]}`, `{"allowed_env":["**"]}`, `{"allowed_env":"PATH"}`} {
		if _, err := decodeOptions([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

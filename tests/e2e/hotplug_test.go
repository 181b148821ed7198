package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// Plugins taken up and dropped while the agent runs, over the real
// supervisor: plugin binaries dropped into, removed from and renamed over
// in a plugin directory it follows (inotify).

// install puts a copy of src into dir as name the way a package manager
// does: written under a temporary name first (not a plugin name), then
// renamed over. It returns when the rename is done.
func install(t *testing.T, src, dir, name string) {
	t.Helper()
	tmp := filepath.Join(dir, name+".dpkg-new")
	copyExecutable(t, src, tmp)
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// hotAgent starts the agent on a plugin directory with the in-tree plugins
// and their manifests, plus the given files.
func hotAgent(t *testing.T, files map[string]string) (*harness.Agent, string, string) {
	t.Helper()
	dir := manifestDir(t)
	for name, src := range files {
		copyExecutable(t, src, filepath.Join(dir, name))
	}
	a, sock, _ := startFresh(t, dir)
	harness.WaitForPing(t, sock, 10*time.Second)
	waitLog(t, a, "agent ready", "the agent did not get ready")
	return a, sock, dir
}

// waitListed polls guest-info until listed(commands) holds, and returns
// how long that took from since.
func waitListed(t *testing.T, c *harness.Conn, since time.Time, within time.Duration, listed func(map[string]bool) bool, what string) time.Duration {
	t.Helper()
	for {
		if listed(guestInfo(t, c)) {
			return time.Since(since)
		}
		if time.Since(since) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type versionReply struct {
	Version string `json:"version"`
	PID     int    `json:"pid"`
}

func testVersion(t *testing.T, c *harness.Conn) versionReply {
	t.Helper()
	r, _ := harness.Decode(t, call(t, c, `{"execute":"test-version"}`))
	if r.Error != nil {
		t.Fatalf("test-version: %+v", r.Error)
	}
	var v versionReply
	if err := json.Unmarshal(r.Return, &v); err != nil {
		t.Fatalf("test-version: %s: %v", r.Return, err)
	}
	return v
}

// startSlow sends test-sleep on its own connection and returns that
// connection, once the request is running in the plugin (the plugin runs a
// session's commands in order, so test-pid answered after it would wait: the
// request is sent, then a moment is left for it to arrive).
func startSlow(t *testing.T, sock string, ms int) *harness.Conn {
	t.Helper()
	c := harness.MustDial(t, sock)
	if _, err := fmt.Fprintf(c, `{"execute":"test-sleep","arguments":{"ms":%d}}`, ms); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	return c
}

func slowReply(t *testing.T, c *harness.Conn) versionReply {
	t.Helper()
	line, err := c.ReadLine()
	if err != nil {
		t.Fatalf("the request in flight got no reply: %v", err)
	}
	r, _ := harness.Decode(t, line)
	if r.Error != nil {
		t.Fatalf("the request in flight failed: %+v", r.Error)
	}
	var v versionReply
	if err := json.Unmarshal(r.Return, &v); err != nil {
		t.Fatalf("test-sleep: %s: %v", r.Return, err)
	}
	return v
}

func waitGone(t *testing.T, pid int, within time.Duration, what string) {
	t.Helper()
	for end := time.Now().Add(within); harness.Alive(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s: process %d still runs after %s", what, pid, within)
		}
	}
}

// A binary dropped into a plugin directory is taken up without a restart:
// its commands are listed in guest-info within a second of the rename that
// installed it, learnt by starting it (it has no manifest), and it serves.
// Its name has no "cmd-" prefix: its kind comes from its Info.
func TestHotAddListedWithinASecond(t *testing.T) {
	a, sock, dir := hotAgent(t, nil)
	c := harness.MustDial(t, sock)
	if got := guestInfo(t, c); got["test-pid"] {
		t.Fatal("test-pid listed before the plugin was installed")
	}
	dropped := time.Now()
	install(t, filepath.Join(pluginDir, "guest-agent-cmd-test"), dir, "guest-agent-extras")
	took := waitListed(t, c, dropped, 10*time.Second, func(m map[string]bool) bool { return m["test-pid"] && m["test-version"] }, "the dropped plugin's commands in guest-info")
	t.Logf("dropped plugin (no manifest: started once to learn it) listed in guest-info %s after its rename", took.Round(time.Millisecond))
	if took >= time.Second {
		t.Errorf("the dropped plugin's commands were listed after %s, want < 1 s", took.Round(time.Millisecond))
	}
	if v := testVersion(t, c); v.Version != "1.0.0" || !strings.HasSuffix(harness.Cmdline(v.PID), "guest-agent-extras") {
		t.Errorf("test-version = %+v from %q, want 1.0.0 from guest-agent-extras", v, harness.Cmdline(v.PID))
	}
	if !regexp.MustCompile(`plugin taken up: plugin=extras kind=command version=1.0.0`).MatchString(a.Log.String()) {
		t.Errorf("no log line saying the plugin was taken up")
	}
	// Its guest-ping is a core command: refused with a log line, as at start.
	if !regexp.MustCompile(`command refused: it is a core command of the agent: command=guest-ping plugin=extras`).MatchString(a.Log.String()) {
		t.Errorf("no log line refusing the dropped plugin's guest-ping")
	}
}

// A removed binary's commands leave guest-info at once (nothing could start
// it again), while a request it was running finishes with its reply; then
// the instance exits.
func TestHotRemoveFinishesRequestsInFlight(t *testing.T) {
	a, sock, dir := hotAgent(t, map[string]string{"guest-agent-cmd-test": filepath.Join(pluginDir, "guest-agent-cmd-test")})
	c := harness.MustDial(t, sock)
	pid := testVersion(t, c).PID
	slow := startSlow(t, sock, 1500)

	removed := time.Now()
	if err := os.Remove(filepath.Join(dir, "guest-agent-cmd-test")); err != nil {
		t.Fatal(err)
	}
	took := waitListed(t, c, removed, 5*time.Second, func(m map[string]bool) bool { return !m["test-pid"] }, "the removed plugin's commands leaving guest-info")
	t.Logf("removed plugin's commands left guest-info %s after the unlink", took.Round(time.Millisecond))
	if r, _ := harness.Decode(t, call(t, c, `{"execute":"test-pid"}`)); r.Error == nil || r.Error.Class != "CommandNotFound" {
		t.Errorf("test-pid after the removal: want CommandNotFound, got %+v", r)
	}
	if !harness.Alive(pid) {
		t.Fatalf("the removed plugin's instance exited with a request in flight")
	}
	v := slowReply(t, slow)
	t.Logf("request in flight finished %s after the removal", time.Since(removed).Round(time.Millisecond))
	if v.PID != pid {
		t.Errorf("the request in flight was answered by pid %d, want the removed instance %d", v.PID, pid)
	}
	waitGone(t, pid, 5*time.Second, "the removed plugin's instance after its last request")
	waitLog(t, a, "reason=\"its binary was removed; its requests in flight finished\"", "no log line saying the removed plugin stopped after its requests")
	if r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-get-host-name"}`)); r.Error != nil {
		t.Errorf("another plugin's command after the removal: %+v", r.Error)
	}
}

// A package upgrade renames a new binary over the plugin's: the next request
// is served by the new binary (its new version), while a request the old one
// was running finishes on it; then the old instance exits.
func TestHotReplaceServesNextRequestFromNewBinary(t *testing.T) {
	a, sock, dir := hotAgent(t, map[string]string{"guest-agent-cmd-test": filepath.Join(pluginDir, "guest-agent-cmd-test")})
	c := harness.MustDial(t, sock)
	old := testVersion(t, c)
	if old.Version != "1.0.0" {
		t.Fatalf("before the upgrade: %+v", old)
	}
	slow := startSlow(t, sock, 1500)

	install(t, testPluginV2, dir, "guest-agent-cmd-test")
	waitLog(t, a, "plugins changed", "the replaced binary was not taken up")
	v := testVersion(t, c)
	if v.Version != "2.0.0" || v.PID == old.PID {
		t.Fatalf("the next request after the upgrade was answered by %+v, want version 2.0.0 from a new process (old: %+v)", v, old)
	}
	if got := slowReply(t, slow); got.PID != old.PID {
		t.Errorf("the request in flight was answered by pid %d, want the old instance %d", got.PID, old.PID)
	}
	waitGone(t, old.PID, 5*time.Second, "the old instance after its last request")
	if !regexp.MustCompile(`plugin binary replaced: new requests go to the new one: plugin=cmd-test kind=command version=2.0.0 .*was=1.0.0`).MatchString(a.Log.String()) {
		t.Errorf("no log line saying the binary was replaced")
	}
	if v2 := testVersion(t, c); v2.PID != v.PID {
		t.Errorf("the new instance changed: %d then %d", v.PID, v2.PID)
	}
}

// A plugin dropped in that declares commands another plugin serves: its
// duplicates are refused with a log line, as at start, and stay with the
// plugin that served them.
func TestHotDuplicateCommandRefused(t *testing.T) {
	a, sock, dir := hotAgent(t, map[string]string{"guest-agent-cmd-test": filepath.Join(pluginDir, "guest-agent-cmd-test")})
	c := harness.MustDial(t, sock)
	before := testVersion(t, c)
	// "cmd-aaa" sorts before "cmd-test": at start it would win; taken up
	// later it must not take commands from the plugin serving them.
	install(t, testPluginV2, dir, "guest-agent-cmd-aaa")
	waitLog(t, a, "plugins changed", "the dropped plugin was not taken up")
	if !regexp.MustCompile(`duplicate command refused: command=test-version plugin=cmd-aaa served_by=cmd-test`).MatchString(a.Log.String()) {
		t.Errorf("no log line refusing cmd-aaa's test-version")
	}
	if v := testVersion(t, c); v.Version != "1.0.0" || v.PID != before.PID {
		t.Errorf("test-version after the duplicate came: %+v, want cmd-test's %+v", v, before)
	}
	// Only when cmd-test goes does cmd-aaa serve them.
	if err := os.Remove(filepath.Join(dir, "guest-agent-cmd-test")); err != nil {
		t.Fatal(err)
	}
	waitListed(t, c, time.Now(), 5*time.Second, func(map[string]bool) bool {
		r, _ := harness.Decode(t, call(t, c, `{"execute":"test-version"}`))
		return r.Error == nil && strings.Contains(string(r.Return), `"2.0.0"`)
	}, "cmd-aaa serving test-version once cmd-test was removed")
}

// plugin_dirs of agent.hcl: two directories searched in order (the first
// holding a name wins) and both followed; a third that does not exist yet
// is followed once it is created.
func TestPluginDirsTwoDirectories(t *testing.T) {
	first, second := harness.ShortTempDir(t), harness.ShortTempDir(t)
	later := filepath.Join(harness.ShortTempDir(t), "plugins.d")
	copyExecutable(t, filepath.Join(pluginDir, "guest-agent-cmd-test"), filepath.Join(first, "guest-agent-cmd-test"))
	copyExecutable(t, testPluginV2, filepath.Join(second, "guest-agent-cmd-test"))
	sock := filepath.Join(harness.ShortTempDir(t), "qga.sock")
	a := harness.StartAgent(t, harness.Options{
		PluginDir: manifestDir(t),
		Config: fmt.Sprintf("plugin_dirs = [%q, %q, %q]\nchannel \"qga\" {\n  method = \"unix-listen\"\n  path = %q\n  dialect = \"qga\"\n}\n",
			first, second, later, sock),
	})
	harness.WaitForPing(t, sock, 10*time.Second)
	c := harness.MustDial(t, sock)
	if v := testVersion(t, c); v.Version != "1.0.0" {
		t.Fatalf("the first directory's plugin must win: %+v", v)
	}
	if !regexp.MustCompile(`plugin shadowed by an earlier directory: plugin=cmd-test used=` + regexp.QuoteMeta(first)).MatchString(a.Log.String()) {
		t.Errorf("no log line saying the second directory's cmd-test is shadowed")
	}
	// The first directory's binary removed: the second's takes its place.
	if err := os.Remove(filepath.Join(first, "guest-agent-cmd-test")); err != nil {
		t.Fatal(err)
	}
	waitListed(t, c, time.Now(), 5*time.Second, func(map[string]bool) bool {
		r, _ := harness.Decode(t, call(t, c, `{"execute":"test-version"}`))
		return r.Error == nil && strings.Contains(string(r.Return), `"2.0.0"`)
	}, "the second directory's cmd-test serving once the first's was removed")
	// A directory created while the agent runs is followed.
	if err := os.Mkdir(later, 0o755); err != nil {
		t.Fatal(err)
	}
	install(t, filepath.Join(pluginDir, "guest-agent-cmd-test"), later, "guest-agent-late")
	waitLog(t, a, "plugin taken up: plugin=late", "a plugin in a plugin directory created after the start was not taken up")
}

// A command plugin named without "cmd-" and without manifest: its kind is
// what its Info says. Lazy start learns it after the agent is ready (it is
// not needed for the channels, which the in-tree plugins' manifests serve).
func TestKindFromInfoNotFileName(t *testing.T) {
	a, sock, _ := hotAgent(t, map[string]string{"guest-agent-thirdparty": filepath.Join(pluginDir, "guest-agent-cmd-test")})
	c := harness.MustDial(t, sock)
	if v := testVersion(t, c); !strings.HasSuffix(harness.Cmdline(v.PID), "guest-agent-thirdparty") {
		t.Errorf("test-version answered by %q", harness.Cmdline(v.PID))
	}
	log := a.Log.String()
	ready := strings.Index(log, "agent ready")
	learnt := strings.Index(log, "plugin asked what it serves: started once, then stopped: plugin=thirdparty")
	if ready < 0 || learnt < ready {
		t.Errorf("thirdparty (no manifest) should be learnt after the agent is ready (ready at %d, learnt at %d)", ready, learnt)
	}
}

// A pinned plugin (checksum in agent.hcl) replaced by a binary that does not
// match its pin is refused as at start: its commands are unrouted, with a log
// line, and the old instance finishes its requests and exits.
func TestHotReplaceRespectsChecksumPin(t *testing.T) {
	dir := manifestDir(t)
	bin := filepath.Join(dir, "guest-agent-cmd-test")
	copyExecutable(t, filepath.Join(pluginDir, "guest-agent-cmd-test"), bin)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(harness.ShortTempDir(t), "qga.sock")
	a := harness.StartAgent(t, harness.Options{
		PluginDir: dir,
		Config:    fmt.Sprintf("plugin \"cmd-test\" {\n  checksum = %q\n}\n", fmt.Sprintf("%x", sha256.Sum256(b))),
		Args:      []string{"-m", "unix-listen", "-p", sock},
	})
	harness.WaitForPing(t, sock, 10*time.Second)
	c := harness.MustDial(t, sock)
	old := testVersion(t, c)

	install(t, testPluginV2, dir, "guest-agent-cmd-test")
	waitLog(t, a, "plugins changed", "the replaced binary was not looked at")
	if !regexp.MustCompile(`plugin not loaded: plugin=cmd-test .*checksum mismatch`).MatchString(a.Log.String()) {
		t.Errorf("no log line refusing the binary that does not match the pin")
	}
	if r, _ := harness.Decode(t, call(t, c, `{"execute":"test-version"}`)); r.Error == nil || r.Error.Class != "CommandNotFound" {
		t.Errorf("test-version after an unpinned replacement: want CommandNotFound, got %+v", r)
	}
	waitGone(t, old.PID, 5*time.Second, "the pinned plugin's old instance")
	for _, pid := range harness.Children(a.Cmd.Process.Pid) {
		if strings.HasSuffix(harness.Cmdline(pid), "guest-agent-cmd-test") {
			t.Errorf("a cmd-test process runs after its replacement was refused: %d", pid)
		}
	}
}

// processOf returns the pid of the agent's child running binary name.
func processOf(t *testing.T, a *harness.Agent, name string) int {
	t.Helper()
	for _, pid := range harness.Children(a.Cmd.Process.Pid) {
		if filepath.Base(harness.Cmdline(pid)) == name {
			return pid
		}
	}
	return 0
}

// The channel's parser upgraded (renamed over): it is restarted on the new
// file and the channel reopened, as after a parser crash; hosts reconnect
// and everything serves. An upgraded exchange whose parser serves its
// listening socket is only noted: its next start uses the new file.
func TestHotReplaceParserRestartsItsChannel(t *testing.T) {
	a, sock, dir := hotAgent(t, nil)
	before := processOf(t, a, "guest-agent-parser-json")
	if before == 0 {
		t.Fatal("no parser-json process")
	}
	install(t, filepath.Join(harness.BinDir(t), "guest-agent-parser-json"), dir, "guest-agent-parser-json")
	waitLog(t, a, "channels restored after plugin restart", "the channel was not reopened on the new parser")
	if !strings.Contains(a.Log.String(), "plugin binary replaced: restarting it and reopening its channels: plugin=parser-json kind=parser") {
		t.Errorf("no log line saying the parser is restarted on its new binary")
	}
	after := processOf(t, a, "guest-agent-parser-json")
	if after == 0 || after == before || harness.Alive(before) {
		t.Errorf("parser-json: pid %d before, %d after (old alive: %v)", before, after, harness.Alive(before))
	}
	harness.WaitForPing(t, sock, 5*time.Second)
	c := harness.MustDial(t, sock)
	if r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-get-host-name"}`)); r.Error != nil {
		t.Errorf("a plugin command through the new parser: %+v", r.Error)
	}

	install(t, filepath.Join(harness.BinDir(t), "guest-agent-exchange-virtio"), dir, "guest-agent-exchange-virtio")
	waitLog(t, a, "plugin binary replaced: its next start uses it: plugin=exchange-virtio", "the idle exchange's new binary was not noted")
	if r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-ping"}`)); r.Error != nil {
		t.Errorf("guest-ping after the exchange's upgrade: %+v", r.Error)
	}
}

// With lazy_start = false every command plugin runs from the start, one
// without manifest included (it was kept running unconfigured after it was
// asked what it serves, with no data plane); a replaced binary's new
// instance starts at once, before any request.
func TestHotReplaceWithoutLazyStart(t *testing.T) {
	dir := manifestDir(t)
	copyExecutable(t, filepath.Join(pluginDir, "guest-agent-cmd-test"), filepath.Join(dir, "guest-agent-cmd-test"))
	sock := filepath.Join(harness.ShortTempDir(t), "qga.sock")
	a := harness.StartAgent(t, harness.Options{
		PluginDir: dir,
		Config:    "lazy_start = false\n",
		Args:      []string{"-m", "unix-listen", "-p", sock},
	})
	harness.WaitForPing(t, sock, 10*time.Second)
	waitLog(t, a, "agent ready", "the agent did not get ready")
	c := harness.MustDial(t, sock)
	old := testVersion(t, c)
	install(t, testPluginV2, dir, "guest-agent-cmd-test")
	waitLog(t, a, "plugins changed", "the replaced binary was not taken up")
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if pid := processOf(t, a, "guest-agent-cmd-test"); pid != 0 && pid != old.PID {
			break
		}
		if time.Now().After(end) {
			t.Fatal("no new cmd-test instance started on its own after the replacement")
		}
	}
	if v := testVersion(t, c); v.Version != "2.0.0" {
		t.Errorf("after the replacement: %+v", v)
	}
}

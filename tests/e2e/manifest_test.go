package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// manifestDir is a plugin directory linking every guest-agent-* file that
// `make build` put in the bin directory: the binaries and their manifests.
func manifestDir(t *testing.T) string {
	t.Helper()
	bin := harness.BinDir(t)
	dir := harness.ShortTempDir(t)
	entries, err := os.ReadDir(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "guest-agent-") {
			if err := os.Symlink(filepath.Join(bin, e.Name()), filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// manifestFile is what `guest-agent manifest` writes beside a plugin.
type manifestFile struct {
	Binary struct {
		GoBuildID string `json:"go_build_id"`
		Size      int64  `json:"size"`
		SHA256    string `json:"sha256"`
	} `json:"binary"`
	Info struct {
		Kind     string `json:"kind"`
		Commands []struct {
			Name     string   `json:"name"`
			Dialects []string `json:"dialects"`
		} `json:"commands"`
	} `json:"info"`
}

func readManifest(t *testing.T, path string) manifestFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("manifest: %v (run `make build`: it writes one beside every plugin)", err)
	}
	var m manifestFile
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("manifest %s: %v", path, err)
	}
	return m
}

// manifestCommands lists what the manifests of every plugin binary in dir
// declare for the qga dialect; each plugin must have one.
func manifestCommands(t *testing.T, dir string) map[string]bool {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".") {
			continue // a manifest, a checksum
		}
		m := readManifest(t, filepath.Join(dir, e.Name()+".manifest"))
		for _, c := range m.Info.Commands {
			if (len(c.Dialects) == 0 || contains(c.Dialects, "qga")) && c.Name != "guest-ping" {
				want[c.Name] = true
			}
		}
	}
	return want
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// startFresh starts the agent on a new, empty state directory and sends it
// nothing: the test's first request is the agent's first.
func startFresh(t *testing.T, dir string) (*harness.Agent, string, time.Time) {
	t.Helper()
	sock := filepath.Join(harness.ShortTempDir(t), "qga.sock")
	start := time.Now()
	a := harness.StartAgent(t, harness.Options{
		PluginDir: dir,
		Config:    "# the channel comes from the flags\n",
		Args:      []string{"-m", "unix-listen", "-p", sock},
	})
	return a, sock, start
}

// dialFirst connects as soon as the agent listens.
func dialFirst(t *testing.T, sock string) *harness.Conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := harness.Dial(sock)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent never listened on %s: %v", sock, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// guestInfo returns the commands guest-info lists, enabled or not.
func guestInfo(t *testing.T, c *harness.Conn) map[string]bool {
	t.Helper()
	r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-info"}`))
	var info struct {
		Cmds []struct {
			Name string `json:"name"`
		} `json:"supported_commands"`
	}
	if err := json.Unmarshal(r.Return, &info); err != nil {
		t.Fatalf("guest-info: %v", err)
	}
	got := map[string]bool{}
	for _, c := range info.Cmds {
		got[c.Name] = true
	}
	return got
}

// commandChildren lists the command plugin processes of the agent.
func commandChildren(a *harness.Agent) []string {
	var out []string
	for _, pid := range harness.Children(a.Cmd.Process.Pid) {
		if cmd := harness.Cmdline(pid); strings.Contains(filepath.Base(cmd), "guest-agent-cmd-") {
			out = append(out, filepath.Base(cmd))
		}
	}
	sort.Strings(out)
	return out
}

// startedPlugins lists the plugins launched so far: the agent logs each
// plugin's launch (go-plugin's client) and output through a logger named
// after the plugin, "guest-agent.<plugin>", used for nothing else.
var pluginLogger = regexp.MustCompile(`\sguest-agent\.([a-z0-9-]+)[:.]`)

func startedPlugins(a *harness.Agent) map[string]int {
	out := map[string]int{}
	for _, m := range pluginLogger.FindAllStringSubmatch(a.Log.String(), -1) {
		out[m[1]]++
	}
	return out
}

func copyExecutable(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func manifestCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(filepath.Join(harness.BinDir(t), "guest-agent"), append([]string{"manifest"}, args...)...).CombinedOutput()
	return string(out), err
}

// An installed guest's first boot: the state directory is empty, every
// plugin has its manifest. The first request, guest-info, lists every
// installed command at once, without starting any command plugin; the first
// plugin command starts only its own plugin.
func TestFirstBootKnowsEveryCommandFromManifests(t *testing.T) {
	dir := manifestDir(t)
	// A third-party plugin, packaged as its packager would: its manifest
	// written by the agent's own command.
	third := filepath.Join(dir, "guest-agent-cmd-test")
	copyExecutable(t, filepath.Join(pluginDir, "guest-agent-cmd-test"), third)
	if out, err := manifestCmd(t, "--write", third); err != nil {
		t.Fatalf("guest-agent manifest --write: %v\n%s", err, out)
	}
	m := readManifest(t, third+".manifest")
	if want, err := exec.Command("go", "tool", "buildid", third).Output(); err == nil && m.Binary.GoBuildID != strings.TrimSpace(string(want)) {
		t.Errorf("manifest build id %q, go tool buildid says %q", m.Binary.GoBuildID, want)
	}
	if out, err := manifestCmd(t, "--check", third); err != nil {
		t.Errorf("guest-agent manifest --check on a fresh manifest: %v\n%s", err, out)
	}
	var plugins []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.Contains(e.Name(), ".") {
			plugins = append(plugins, filepath.Join(dir, e.Name()))
		}
	}
	if out, err := manifestCmd(t, append([]string{"--check"}, plugins...)...); err != nil {
		t.Fatalf("the manifests beside the plugins do not all match their binaries (a plugin rebuilt without make build?): %v\n%s", err, out)
	}
	want := manifestCommands(t, dir)
	for _, name := range []string{"guest-get-host-name", "guest-file-open", "guest-exec", "guest-network-get-interfaces", "guest-fsfreeze-freeze", "test-pid"} {
		if !want[name] {
			t.Fatalf("the manifests do not declare %s: %v", name, want)
		}
	}

	a, sock, start := startFresh(t, dir)
	c := dialFirst(t, sock)
	sent := time.Now()
	got := guestInfo(t, c)
	took := time.Since(sent)
	t.Logf("first request guest-info on an empty state directory: answered in %s, %s after the agent was started; %d commands",
		took.Round(time.Microsecond), time.Since(start).Round(time.Millisecond), len(got))
	if took > time.Second {
		t.Errorf("the first guest-info took %s: it must not wait for plugins to be learnt", took)
	}
	for name := range want {
		if !got[name] {
			t.Errorf("the first guest-info does not list %s", name)
		}
	}
	if kids := commandChildren(a); len(kids) != 0 {
		t.Errorf("command plugins running after the first guest-info: %v", kids)
	}
	for name := range startedPlugins(a) {
		if strings.HasPrefix(name, "cmd-") {
			t.Errorf("plugin %s was started before any of its commands was called", name)
		}
	}

	// The first plugin command starts that plugin only.
	r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-get-host-name"}`))
	var host struct {
		Name string `json:"host-name"`
	}
	if err := json.Unmarshal(r.Return, &host); err != nil || host.Name == "" {
		t.Fatalf("guest-get-host-name: %s %v", r.Return, err)
	}
	if hn, _ := os.Hostname(); host.Name != hn {
		t.Errorf("guest-get-host-name = %q, want %q", host.Name, hn)
	}
	if kids := commandChildren(a); len(kids) != 1 || kids[0] != "guest-agent-cmd-system" {
		t.Errorf("after guest-get-host-name the command plugins running are %v, want cmd-system only", kids)
	}
	r, _ = harness.Decode(t, call(t, c, `{"execute":"test-pid"}`))
	if r.Error != nil {
		t.Errorf("test-pid (third-party plugin with its manifest): %+v", r.Error)
	}
	if log := a.Log.String(); strings.Contains(log, "manifest ignored") || strings.Contains(log, "differs from") {
		t.Errorf("a manifest was refused or found wrong:\n%s", log)
	}
}

// Manifests that do not describe the binary beside them are ignored: a
// binary replaced by another, a manifest with another build id, no
// manifest at all. Those plugins are learnt the old way (started once in
// the background, then cached in the state directory) and still serve.
func TestStaleOrMissingManifestsFallBack(t *testing.T) {
	dir := manifestDir(t)
	// cmd-network's binary replaced by another plugin; its manifest stays.
	network := filepath.Join(dir, "guest-agent-cmd-network")
	if err := os.Remove(network); err != nil {
		t.Fatal(err)
	}
	copyExecutable(t, filepath.Join(pluginDir, "guest-agent-cmd-test"), network)
	// cmd-system's manifest names another build.
	system := filepath.Join(dir, "guest-agent-cmd-system.manifest")
	var raw map[string]any
	b, err := os.ReadFile(system)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	raw["binary"].(map[string]any)["go_build_id"] = "not/the/build/of/this/binary"
	b, _ = json.Marshal(raw)
	if err := os.Remove(system); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(system, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// cmd-files has none.
	if err := os.Remove(filepath.Join(dir, "guest-agent-cmd-files.manifest")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{network, filepath.Join(dir, "guest-agent-cmd-system")} {
		if out, err := manifestCmd(t, "--check", p); err == nil {
			t.Errorf("guest-agent manifest --check %s: want a failure, got\n%s", p, out)
		}
	}

	a, sock, _ := startFresh(t, dir)
	c := dialFirst(t, sock)
	sent := time.Now()
	got := guestInfo(t, c)
	t.Logf("first guest-info with three plugins to learn: %s", time.Since(sent).Round(time.Microsecond))
	for _, name := range []string{"test-pid", "guest-get-host-name", "guest-file-open", "guest-exec"} {
		if !got[name] {
			t.Errorf("guest-info does not list %s", name)
		}
	}
	if got["guest-network-get-interfaces"] {
		t.Errorf("guest-info lists guest-network-get-interfaces from a stale manifest")
	}
	started := startedPlugins(a)
	for _, p := range []string{"cmd-network", "cmd-system", "cmd-files"} {
		if started[p] == 0 {
			t.Errorf("%s was not started to learn what it serves: %v", p, started)
		}
	}
	for _, p := range []string{"cmd-exec", "cmd-nova"} {
		if started[p] != 0 {
			t.Errorf("%s has a valid manifest but was started: %v", p, started)
		}
	}
	log := a.Log.String()
	for _, p := range []string{"cmd-network", "cmd-system"} {
		if !regexp.MustCompile(`manifest ignored.*plugin=` + p).MatchString(log) {
			t.Errorf("no log line saying %s's manifest was ignored", p)
		}
	}
	for req, class := range map[string]string{
		`{"execute":"test-pid"}`:                                               "",
		`{"execute":"guest-get-host-name"}`:                                    "",
		`{"execute":"guest-file-open","arguments":{"path":"/proc/self/stat"}}`: "",
		`{"execute":"guest-network-get-interfaces"}`:                           "CommandNotFound",
	} {
		r, _ := harness.Decode(t, call(t, c, req))
		switch {
		case class == "" && r.Error != nil:
			t.Errorf("%s: %+v", req, r.Error)
		case class != "" && (r.Error == nil || r.Error.Class != class):
			t.Errorf("%s: want %s, got %+v", req, class, r)
		}
	}
	// What was learnt is cached for the next boot, in the background.
	cache := filepath.Join(a.StateDir, "plugin-info.json")
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(cache)
		if err == nil && strings.Contains(string(b), `"cmd-network"`) && strings.Contains(string(b), `"cmd-files"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin info cache not written: %v %s", err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A manifest that matches its binary but says something else than the
// plugin does (a packager's mistake): believed until the plugin starts,
// then the agent logs a warning and routes by what the plugin really serves.
func TestManifestDifferingFromPluginIsCorrected(t *testing.T) {
	dir := manifestDir(t)
	p := filepath.Join(dir, "guest-agent-cmd-test")
	copyExecutable(t, filepath.Join(pluginDir, "guest-agent-cmd-test"), p)
	if out, err := manifestCmd(t, "--write", p); err != nil {
		t.Fatalf("guest-agent manifest --write: %v\n%s", err, out)
	}
	var raw map[string]any
	b, _ := os.ReadFile(p + ".manifest")
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	info := raw["info"].(map[string]any)
	var cmds []any
	for _, c := range info["commands"].([]any) {
		if c.(map[string]any)["name"] != "test-blob" {
			cmds = append(cmds, c)
		}
	}
	info["commands"] = append(cmds, map[string]any{"name": "test-bogus", "description": "not served"})
	b, _ = json.Marshal(raw)
	if err := os.WriteFile(p+".manifest", b, 0o644); err != nil {
		t.Fatal(err)
	}

	a, sock, _ := startFresh(t, dir)
	c := dialFirst(t, sock)
	got := guestInfo(t, c)
	if !got["test-bogus"] || got["test-blob"] {
		t.Fatalf("before the plugin starts guest-info should follow its manifest: bogus %v, blob %v", got["test-bogus"], got["test-blob"])
	}
	if r, _ := harness.Decode(t, call(t, c, `{"execute":"test-pid"}`)); r.Error != nil {
		t.Fatalf("test-pid: %+v", r.Error)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = guestInfo(t, c)
		if got["test-blob"] && !got["test-bogus"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("routes not rebuilt from the plugin's Info: bogus %v, blob %v", got["test-bogus"], got["test-blob"])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !regexp.MustCompile(`differs from.*manifest.*plugin=cmd-test`).MatchString(a.Log.String()) {
		t.Errorf("no warning that cmd-test's manifest differs from what it serves")
	}
	if r, _ := harness.Decode(t, call(t, c, `{"execute":"test-blob","arguments":{"size":16}}`)); r.Error != nil {
		t.Errorf("test-blob after the routes were rebuilt: %+v", r.Error)
	}
}

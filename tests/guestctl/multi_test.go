package guestctl

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// hostOfGuests is a directory of sockets: both real agents, one that
// accepts and never answers, and a stale socket nobody listens on.
func hostOfGuests(t *testing.T) string {
	t.Helper()
	agents := bothAgents(t, harness.Options{})
	dir := harness.ShortTempDir(t)
	for _, a := range agents {
		if err := os.Symlink(a.socket, filepath.Join(dir, a.name+".sock")); err != nil {
			t.Fatal(err)
		}
	}
	silent, err := net.Listen("unix", filepath.Join(dir, "silent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	stale, err := net.Listen("unix", filepath.Join(dir, "stale.sock"))
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	return dir
}

// TestAllGuests: --all runs against every guest at once, one line or one
// JSON object per guest, per-guest time limits, exit 1 when any failed.
func TestAllGuests(t *testing.T) {
	dir := hostOfGuests(t)
	start := time.Now()
	r := guestctl(t, timeout, nil, "--socket-dir", dir, "--all", "--timeout", "2s", "ping")
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("a silent guest held the others: %s", took)
	}
	if r.code != 1 || !strings.Contains(r.stderr, "2 of 4 guests failed") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	sort.Strings(lines)
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "guest-agent: agent answered in ") ||
		!strings.HasPrefix(lines[1], "qemu-ga: agent answered in ") ||
		!strings.HasPrefix(lines[2], "silent: error: ") || !strings.Contains(lines[2], "no answer within 2s") ||
		!strings.HasPrefix(lines[3], "stale: error: ") || !strings.Contains(lines[3], "connection refused") {
		t.Fatalf("lines:\n%s", strings.Join(lines, "\n"))
	}

	r = guestctl(t, timeout, nil, "--socket-dir", dir, "--all", "--timeout", "2s", "--json", "call", "guest-get-host-name")
	host, _ := os.Hostname()
	got := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var g struct {
			Guest  string `json:"guest"`
			OK     bool   `json:"ok"`
			Result struct {
				HostName string `json:"host-name"`
			} `json:"result"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal([]byte(l), &g); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got[g.Guest] = g.OK
		if g.OK != (g.Result.HostName == host) || g.OK == (g.Error != "") {
			t.Fatalf("%q", l)
		}
	}
	if len(got) != 4 || !got["guest-agent"] || !got["qemu-ga"] || got["silent"] || got["stale"] {
		t.Fatalf("per guest: %v\n%s", got, r.stdout)
	}

	// Several named guests, exec in each; a name that is not there fails alone.
	r = guestctl(t, timeout, nil, "--socket-dir", dir, "-d", "guest-agent,qemu-ga,nosuch", "exec", "--", "sh", "-c", "echo out; exit 3")
	lines = strings.Split(strings.TrimSpace(r.stdout), "\n")
	sort.Strings(lines)
	want := []string{"guest-agent: exit 3", "guest-agent: out", "nosuch: error: guest \"nosuch\", channel org.qemu.guest_agent.0: no running guest of that name", "qemu-ga: exit 3", "qemu-ga: out"}
	if r.code != 1 || strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("exit %d:\n%s", r.code, r.stdout)
	}
	r = mustRun(t, "--socket-dir", dir, "-d", "guest-agent,qemu-ga", "exec", "true")
	if strings.Count(r.stdout, "exit 0") != 2 {
		t.Fatalf("exec true: %q", r.stdout)
	}
}

// TestList: every guest of the host, whether its agent answers.
func TestList(t *testing.T) {
	dir := hostOfGuests(t)
	if err := os.Mkdir(filepath.Join(dir, "nochannel"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := guestctl(t, timeout, nil, "--socket-dir", dir, "--timeout", "1s", "--json", "list")
	if r.code != 0 {
		t.Fatalf("exit %d %q", r.code, r.stderr)
	}
	agent := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var g struct {
			Name    string `json:"name"`
			Agent   string `json:"agent"`
			Version string `json:"version"`
		}
		if err := json.Unmarshal([]byte(l), &g); err != nil {
			t.Fatal(err)
		}
		agent[g.Name] = g.Agent
		if (g.Agent == "answers") != (g.Version != "") {
			t.Fatalf("%q", l)
		}
	}
	want := map[string]string{"guest-agent": "answers", "qemu-ga": "answers", "silent": "no answer", "stale": "no answer", "nochannel": "no channel"}
	for k, v := range want {
		if agent[k] != v {
			t.Fatalf("list: %v, want %v", agent, want)
		}
	}
	r = mustRun(t, "--socket-dir", dir, "--timeout", "1s", "list")
	if !strings.HasPrefix(r.stdout, "NAME") || !strings.Contains(r.stdout, "nochannel    no channel") {
		t.Fatalf("table:\n%s", r.stdout)
	}
}

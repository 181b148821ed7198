package negotiator

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// guestCommands writes the guest's command directory (cmd-exec's
// commands_dir).
func guestCommands(t *testing.T) string {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"hello":   "#!/bin/sh\necho \"  hello $*  \"\n",
		"upper":   "#!/bin/sh\ntr a-z A-Z\n",
		"lines":   "#!/bin/sh\nprintf 'one\\n two\\n'\n",
		"fails":   "#!/bin/sh\necho half; echo 'no space left' >&2; exit 4\n",
		"unicode": "#!/bin/sh\nprintf 'gr\\303\\274\\303\\237e \\360\\237\\214\\215 \\344\\270\\255'\n",
		"big":     "#!/bin/sh\nhead -c 1300000 /dev/zero | tr '\\0' q\n",
		"sh":      "not executable: a name that ../../bin/sh must not reach\n",
	} {
		mode := os.FileMode(0o755)
		if name == "sh" {
			mode = 0o644
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startNegotiatorAgent runs the real agent with a negotiator channel on a
// unix socket (standing in for the host-to-guest port) routed to cmd-exec.
func startNegotiatorAgent(t *testing.T) (sock string) {
	t.Helper()
	dir := harness.ShortTempDir(t)
	sock = filepath.Join(dir, "h2g.sock")
	harness.StartAgent(t, harness.Options{Config: fmt.Sprintf(`
limits {
  max_request_bytes    = 65536
  request_idle_timeout = "1s"
}
channel "negotiator" {
  method  = "unix-listen"
  path    = %q
  dialect = "negotiator"
}
plugin "cmd-exec" {
  options = { commands_dir = %q, execute_timeout = "5s" }
}
`, sock, guestCommands(t))})
	dialFrames(t, sock).c.Close() // it listens
	return sock
}

// The host calls the guest: a peer written from the protocol text against
// the real agent's negotiator dialect.
func TestHostCallsGuestPeer(t *testing.T) {
	sock := startNegotiatorAgent(t)
	f := dialFrames(t, sock)

	f.send(map[string]any{"method": "list_commands", "args": []any{}, "kw": map[string]any{}})
	var names []string
	if r := f.reply(); !*r.Success || json.Unmarshal(r.Result, &names) != nil {
		t.Fatalf("list_commands: %+v", r)
	}
	if got := strings.Join(names, " "); got != "big fails find-disk-usage find-distribution-codename find-distribution-release find-distributor-id find-ip-addresses hello lines unicode upper" {
		t.Fatalf("list_commands: %s", got)
	}
	f.send(map[string]any{"method": "execute", "args": []string{"hello", "wide world"}})
	if got := f.output(); got != "hello wide world" {
		t.Fatalf("execute: %q", got)
	}
	f.send(map[string]any{"command": "execute", "arguments": []string{"upper"}, "keyword-arguments": map[string]any{"input": "from the host"}})
	if got := f.output(); got != "FROM THE HOST" {
		t.Fatalf("execute with input (seed spelling): %q", got)
	}
	f.send(map[string]any{"method": "execute", "args": []string{"lines"}})
	if got := f.output(); got != "one\n two\n" {
		t.Fatalf("several lines: %q", got)
	}
	f.send(map[string]any{"method": "execute", "args": []string{"unicode"}})
	if got := f.output(); got != "grüße 🌍 中" {
		t.Fatalf("non-ASCII: %q", got)
	}
	f.send(map[string]any{"method": "execute", "args": []string{"big"}})
	if got := f.output(); len(got) != 1300000 || strings.Trim(got, "q") != "" {
		t.Fatalf("reply over 1 MiB: %d bytes", len(got))
	}
	f.send(map[string]any{"method": "execute", "args": []string{"fails"}})
	f.failure("command 'fails' failed: exit status 4: no space left")
	f.send(map[string]any{"method": "execute", "args": []string{"missing"}})
	f.failure("command 'missing' not found")
	f.send(map[string]any{"method": "execute", "args": []string{"../../bin/sh", "-c", "echo escaped"}})
	f.failure("command 'sh' not found")
	f.send(map[string]any{"method": nil})
	f.failure("no method")
	f.send(map[string]any{"method": "__init__"})
	f.failure("Method __init__ not supported")
	f.send(map[string]any{"method": "raw_write", "args": []string{"x"}})
	f.failure("Method raw_write not supported")

	// Malformed lengths: each gets one error reply and the stream goes on.
	f.raw("twenty\n")
	f.failure("expected a byte count")
	f.raw(strings.Repeat("7", 64) + "\n")
	f.failure("length line is longer")
	f.raw("100000\n" + strings.Repeat("x", 100000))
	f.failure("over the limit of 65536 bytes")
	f.send(map[string]any{"method": "execute", "args": []string{"hello"}})
	if got := f.output(); got != "hello" {
		t.Fatalf("after malformed lengths: %q", got)
	}
	// A request that stops arriving: discarded after request_idle_timeout.
	f.raw("40\n{\"method\": \"exe")
	start := time.Now()
	f.failure("request discarded")
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("incomplete request answered after %s", took)
	}
	f.send(map[string]any{"method": "execute", "args": []string{"hello"}})
	if got := f.output(); got != "hello" {
		t.Fatalf("after a discarded request: %q", got)
	}

	// A peer that disconnects mid-frame: the next one is served.
	f.raw("60\n{\"method\": \"execute\", \"ar")
	f.c.Close()
	g := dialFrames(t, sock)
	g.send(map[string]any{"method": "execute", "args": []string{"hello", "again"}})
	if got := g.output(); got != "hello again" {
		t.Fatalf("after a mid-frame disconnect: %q", got)
	}
}

// guestctl negotiator against the real agent.
func TestHostCallsGuestGuestctl(t *testing.T) {
	sock := startNegotiatorAgent(t)
	out, errOut, code := run(t, "", "guestctl", "negotiator", "--socket", sock, "list-commands")
	if code != 0 || !strings.Contains(out, "\nhello\n") {
		t.Fatalf("list-commands: %d %q %q", code, out, errOut)
	}
	out, errOut, code = run(t, "shout", "guestctl", "negotiator", "--socket", sock, "exec", "--stdin", "upper")
	if code != 0 || out != "SHOUT\n" {
		t.Fatalf("exec --stdin: %d %q %q", code, out, errOut)
	}
	out, errOut, code = run(t, "", "guestctl", "negotiator", "--socket", sock, "exec", "hello", "-x", "ü")
	if code != 0 || out != "hello -x ü\n" {
		t.Fatalf("exec: %d %q %q", code, out, errOut)
	}
	_, errOut, code = run(t, "", "guestctl", "negotiator", "--socket", sock, "exec", "fails")
	if code == 0 || !strings.Contains(errOut, "exit status 4") {
		t.Fatalf("exec of a failing command: %d %q", code, errOut)
	}
	// guestctl negotiator through a socket directory: GUEST by name.
	dir := filepath.Dir(sock)
	guests := filepath.Join(dir, "guests", "vm1")
	mkdir(t, guests)
	if err := os.Symlink(sock, filepath.Join(guests, "negotiator-host-to-guest.0")); err != nil {
		t.Fatal(err)
	}
	out, _, code = run(t, "", "guestctl", "--socket-dir", filepath.Dir(guests), "negotiator", "list-guests")
	if code != 0 || out != "vm1\n" {
		t.Fatalf("list-guests: %d %q", code, out)
	}
	out, errOut, code = run(t, "", "guestctl", "--socket-dir", filepath.Dir(guests), "negotiator", "exec", "vm1", "hello")
	if code != 0 || out != "hello\n" {
		t.Fatalf("exec vm1: %d %q %q", code, out, errOut)
	}
}

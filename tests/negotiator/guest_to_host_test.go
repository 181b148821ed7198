package negotiator

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// The guest calls its host: guest-agent host (the guest's program) over a
// stand-in for the port, guestctl daemon (the host) on the other end.
func TestGuestCallsHostThroughDaemon(t *testing.T) {
	dir := harness.ShortTempDir(t)
	guests := filepath.Join(dir, "guests")
	mkdir(t, guests)
	pipe := newVirtioPipe(t, filepath.Join(guests, "vm-one.sock"), filepath.Join(dir, "port"))
	startProcess(t, "guestctl", "daemon", "--socket-dir", guests, "--commands-dir", hostCommands(t), "--rescan", "200ms")
	host := func(stdin string, args ...string) (string, string, int) {
		return run(t, stdin, "guest-agent", append([]string{"host", "--relay", "", "--device", pipe.guestSide}, args...)...)
	}
	var out, errOut string
	var code int
	// The daemon connects within its rescan; until then a call has no
	// answer, so the first one waits for it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, errOut, code = host("", "--timeout", "1s", "list-commands")
		if code == 0 || time.Now().After(deadline) {
			break
		}
	}
	if code != 0 || !strings.Contains(out, "find-ip-addresses\n") || !strings.Contains(out, "whoami\n") {
		t.Fatalf("list-commands: %d %q %q", code, out, errOut)
	}
	cases := []struct {
		stdin  string
		args   []string
		out    string
		code   int
		stderr string
	}{
		{"", []string{"exec", "whoami"}, "vm-one\n", 0, ""},
		{"quiet please", []string{"exec", "--stdin", "upper"}, "QUIET PLEASE\n", 0, ""},
		{"", []string{"exec", "unicode"}, "✓ déjà vu\n", 0, ""},
		{"", []string{"exec", "fails"}, "", 7, "command 'fails' failed: exit status 7: disk on fire"},
		{"", []string{"exec", "missing"}, "", 1, "command 'missing' not found"},
		{"", []string{"exec", "../../bin/sh", "-c", "id"}, "", 1, "command 'sh' not found"},
	}
	for _, c := range cases {
		out, errOut, code := host(c.stdin, c.args...)
		if out != c.out || code != c.code || !strings.Contains(errOut, c.stderr) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %d, %q, %q", c.args, code, out, errOut, c.code, c.out, c.stderr)
		}
	}
	out, _, code = host("", "exec", "big")
	if code != 0 || len(out) != 1200001 || strings.Trim(out, "z\n") != "" {
		t.Fatalf("reply over 1 MiB: exit %d, %d bytes", code, len(out))
	}
}

// A host written from the protocol text answers guest-agent host: what the
// client sends, and the exit status it takes from the host's error.
func TestGuestClientAgainstPeer(t *testing.T) {
	dir := harness.ShortTempDir(t)
	port := filepath.Join(dir, "port")
	ln := listen(t, port)
	asked := make(chan string, 2)
	go func() {
		for i := 0; i < 2; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f := &frameConn{t: t, c: c, r: newReader(c)}
			asked <- string(f.read())
			if i == 0 {
				body := `{"success": true, "result": "  spaced  \u00e9"}`
				f.raw(fmt.Sprintf("%d\n%s", len(body), body))
			} else {
				body := `{"success": false, "error": "command 'x' failed: exit status 42: nope"}`
				f.raw(fmt.Sprintf("%d\n%s", len(body), body))
			}
			c.Close()
		}
	}()
	out, _, code := run(t, "in\u00e9", "guest-agent", "host", "--relay", "", "--device", port, "exec", "--stdin", "cmd", "--flag", "ü")
	if code != 0 || out != "  spaced  é\n" {
		t.Fatalf("exec: %d %q", code, out)
	}
	if got := <-asked; got != `{"method":"execute","args":["cmd","--flag","\u00fc"],"kw":{"input":"in\u00e9"}}` {
		t.Fatalf("request on the wire: %s", got)
	}
	_, errOut, code := run(t, "", "guest-agent", "host", "--relay", "", "--device", port, "exec", "x")
	if code != 42 || !strings.Contains(errOut, "nope") {
		t.Fatalf("failed command: exit %d, %q", code, errOut)
	}
	<-asked
}

// The agent holds the port (negotiator_host): several programs calling at
// once are queued, none refused; a malformed frame to the relay gets an
// error reply and the caller's connection goes on.
func TestGuestCallsHostThroughAgent(t *testing.T) {
	dir := harness.ShortTempDir(t)
	guests := filepath.Join(dir, "guests")
	mkdir(t, guests)
	pipe := newVirtioPipe(t, filepath.Join(guests, "vm-two.sock"), filepath.Join(dir, "port"))
	startProcess(t, "guestctl", "daemon", "--socket-dir", guests, "--commands-dir", hostCommands(t), "--rescan", "200ms")
	relay := filepath.Join(dir, "relay.sock")
	harness.StartAgent(t, harness.Options{Config: fmt.Sprintf(`
negotiator_host {
  enabled = true
  port    = %q
  socket  = %q
  timeout = "5s"
}
channel "qga" {
  method  = "unix-listen"
  path    = %q
  dialect = "qga"
}
`, pipe.guestSide, relay, filepath.Join(dir, "qga.sock"))})
	f := dialFrames(t, relay)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		f.send(map[string]any{"method": "execute", "args": []string{"whoami"}})
		if r := f.reply(); *r.Success {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no answer through the agent: %s", r.Error)
		}
	}
	f.raw("many\n")
	f.failure("expected a byte count")
	f.send(map[string]any{"command": "execute", "arguments": []string{"whoami"}})
	if got := f.output(); got != "vm-two" {
		t.Fatalf("after a malformed length: %q", got)
	}

	f.send(map[string]any{"method": "execute", "args": []string{"upper"}, "kw": map[string]any{"input": "über"}})
	if got := f.output(); got != "üBER" {
		t.Fatalf("input through the agent: %q", got)
	}
	f.send(map[string]any{"method": "execute", "args": []string{"unicode"}})
	if got := f.output(); got != "✓ déjà vu" {
		t.Fatalf("non-ASCII through the agent: %q", got)
	}
	f.send(map[string]any{"method": "execute", "args": []string{"big"}})
	if got := f.output(); len(got) != 1200000 {
		t.Fatalf("reply over 1 MiB through the agent: %d bytes", len(got))
	}
	f.send(map[string]any{"method": "execute", "args": []string{"fails"}})
	f.failure("command 'fails' failed: exit status 7: disk on fire")
	f.send(map[string]any{"method": "execute", "args": []string{"missing"}})
	f.failure("command 'missing' not found")
	f.send(map[string]any{"method": "execute", "args": []string{"../../bin/sh", "-c", "id"}})
	f.failure("command 'sh' not found")
	f.send(map[string]any{"method": "list_commands"})
	var names []string
	if r := f.reply(); !*r.Success || json.Unmarshal(r.Result, &names) != nil || len(names) < 6 {
		t.Fatalf("list_commands through the agent: %+v", r)
	}
	// A caller that leaves mid-frame costs nobody else anything.
	f.raw("80\n{\"method\": \"execute\", \"ar")
	f.c.Close()
	g := dialFrames(t, relay)
	g.send(map[string]any{"method": "execute", "args": []string{"whoami"}})
	if got := g.output(); got != "vm-two" {
		t.Fatalf("after a caller left mid-frame: %q", got)
	}

	const callers = 6
	var wg sync.WaitGroup
	errs := make(chan string, callers)
	start := time.Now()
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprintf("caller-%d", i)
			out, errOut, code := run(t, "", "guest-agent", "host", "--relay", relay, "exec", "pause", want)
			if code != 0 || out != want+"\n" {
				errs <- fmt.Sprintf("%s: exit %d, %q, %q", want, code, out, errOut)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	// Queued, not run side by side: the host answers one call at a time.
	if took := time.Since(start); took < callers*300*time.Millisecond {
		t.Errorf("%d calls of 0.3 s each took %s: not one at a time", callers, took)
	}
}

package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// libvirtSync resynchronises as libvirt does before every command: a 0xFF
// byte, guest-sync-delimited with a fresh id, then lines are read and
// dropped until the one that carries the id, within 5 s. It returns the
// lines dropped and how long the sync took.
func libvirtSync(t *testing.T, c *harness.Conn, id int) (dropped []string, took time.Duration) {
	t.Helper()
	start := time.Now()
	dropped, err := c.SyncDelimited(id, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return dropped, time.Since(start)
}

// expectNoLine fails if the agent writes anything within d.
func expectNoLine(t *testing.T, c *harness.Conn, d time.Duration) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	line, err := c.R.ReadString('\n')
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("unexpected data after the sync's reply: %.200q (%v)", line, err)
	}
}

// A host that gave up on a command and resynchronised must never receive
// that command's reply after the sync's reply: it would take it for the
// answer to its next command. The sync is answered at once although the
// command still runs.
func TestSyncIsABarrier(t *testing.T) {
	a := startAgent(t)
	c := harness.MustDial(t, a.Socket)

	// A command still running when the host gives up on it.
	if _, err := c.Write([]byte(`{"execute":"test-sleep","arguments":{"ms":1500},"id":"slow"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	dropped, took := libvirtSync(t, c, 4242)
	if len(dropped) != 0 || took > time.Second {
		t.Fatalf("sync took %s and dropped %q: it waited for the running command", took, dropped)
	}
	r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-ping","id":"next"}`+"\n"))
	if string(r.ID) != `"next"` || r.Error != nil {
		t.Fatalf("the command after the sync got %s / %v", r.ID, r.Error)
	}
	expectNoLine(t, c, 2500*time.Millisecond) // the sleep ended meanwhile: its reply is dropped

	// Bulk replies racing a sync, as a host that gave up on a large read:
	// a reply may come before the sync's (the host drops it), never after.
	for i := 0; i < 20; i++ {
		if _, err := fmt.Fprintf(c, `{"execute":"test-blob","arguments":{"size":%d},"id":"blob%d"}`+"\n", 4<<20, i); err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			time.Sleep(time.Duration(i) * time.Millisecond)
		}
		libvirtSync(t, c, 5000+i)
		line := call(t, c, fmt.Sprintf(`{"execute":"guest-ping","id":"ping%d"}`+"\n", i))
		if r, _ := harness.Decode(t, line); string(r.ID) != fmt.Sprintf(`"ping%d"`, i) {
			t.Fatalf("round %d: the reply after the sync is %.120q, not the ping's", i, line)
		}
	}
	expectNoLine(t, c, 500*time.Millisecond)
}

// Right after a first boot the agent may still be learning what a plugin
// without a manifest serves; a guest-info sent then waits for it, but a sync
// behind it is answered at once (libvirt gives it 5 s).
func TestSyncWhileRoutesPending(t *testing.T) {
	dir := harness.ShortTempDir(t)
	plugins := filepath.Join(dir, "plugins")
	if err := os.Mkdir(plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(pluginDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "guest-agent-cmd-test") {
			continue
		}
		if err := os.Symlink(filepath.Join(pluginDir, e.Name()), filepath.Join(plugins, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	// A plugin slow to start and without a manifest: learnt in the
	// background for three seconds.
	script := fmt.Sprintf("#!/bin/sh\n/bin/sleep 3\nexec %s\n", filepath.Join(pluginDir, "guest-agent-cmd-test"))
	if err := os.WriteFile(filepath.Join(plugins, "guest-agent-cmd-slow"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	a := harness.StartAgent(t, harness.Options{PluginDir: plugins})
	c := harness.MustDial(t, a.Socket)
	if _, err := c.Write([]byte(`{"execute":"guest-info","id":"early"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	dropped, took := libvirtSync(t, c, 77)
	t.Logf("sync answered in %s while the routes were pending", took.Round(time.Millisecond))
	if len(dropped) != 0 || took > time.Second {
		t.Fatalf("sync took %s and dropped %d lines: it waited behind guest-info", took, len(dropped))
	}
	// The guest-info sent before the sync is never answered after it; the
	// next one is complete.
	enabled := guestInfoEnabled(t, c)
	if !enabled["test-sleep"] || !enabled["guest-get-host-name"] {
		t.Fatalf("guest-info after the routes were learnt lacks commands: %v", enabled)
	}
	expectNoLine(t, c, 500*time.Millisecond)
}

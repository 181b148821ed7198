package e2e

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// The commands cmd-exec serves beyond qemu-ga, through the real supervisor,
// parser and plugin: listed in guest-info, a time limit, stdin written while
// the command runs (input-data decoded by the parser), output read as it
// comes, and a signal to the group.
func TestExecBeyondQemuGA(t *testing.T) {
	a := startAgent(t)
	c := harness.MustDial(t, a.Socket)

	var info struct {
		Cmds []struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
		} `json:"supported_commands"`
	}
	mustQGA(t, c, "guest-info", map[string]any{}, &info)
	listed := map[string]bool{}
	for _, cmd := range info.Cmds {
		listed[cmd.Name] = cmd.Enabled
	}
	for _, name := range []string{"guest-exec-terminate", "guest-exec-read", "guest-exec-write"} {
		if !listed[name] {
			t.Errorf("%s not listed enabled in guest-info", name)
		}
	}

	// cat with an open stdin: each write comes back on stdout while it runs.
	var started struct {
		PID int `json:"pid"`
	}
	mustQGA(t, c, "guest-exec", map[string]any{"path": "/bin/cat", "capture-output": true, "input-pipe": true}, &started)
	offset := 0
	for _, line := range []string{"one\n", strings.Repeat("x", 100000) + "\n"} {
		var w struct {
			Count int `json:"count"`
		}
		mustQGA(t, c, "guest-exec-write", map[string]any{"pid": started.PID, "input-data": base64.StdEncoding.EncodeToString([]byte(line))}, &w)
		if w.Count != len(line) {
			t.Fatalf("wrote %d of %d bytes", w.Count, len(line))
		}
		got := ""
		deadline := time.Now().Add(10 * time.Second)
		for got != line {
			var r struct {
				Exited    bool   `json:"exited"`
				OutData   string `json:"out-data"`
				OutOffset int    `json:"out-offset"`
			}
			mustQGA(t, c, "guest-exec-read", map[string]any{"pid": started.PID, "out-offset": offset, "wait": 2}, &r)
			b, _ := base64.StdEncoding.DecodeString(r.OutData)
			got += string(b)
			offset = r.OutOffset
			if r.Exited || time.Now().After(deadline) {
				t.Fatalf("cat's echo of %d bytes: got %d, exited %v", len(line), len(got), r.Exited)
			}
		}
	}
	mustQGA(t, c, "guest-exec-terminate", map[string]any{"pid": started.PID, "signal": "TERM"}, nil)
	if st := execWait(t, c, started.PID); st["signal"] != float64(15) {
		t.Fatalf("cat after SIGTERM: %v", st)
	}

	// The time limit, and the status that says it struck.
	mustQGA(t, c, "guest-exec", map[string]any{"path": "/bin/sleep", "arg": []string{"60"}, "timeout": 0.3}, &started)
	st := execWait(t, c, started.PID)
	if st["signal"] != float64(9) || st["timed-out"] != true {
		t.Fatalf("sleep past its limit: %v", st)
	}
	// Bad input gets an error and the channel goes on.
	if _, desc := qga(t, c, "guest-exec-read", map[string]any{"pid": 0}); desc != "Invalid parameter 'pid'" {
		t.Fatalf("read of an unknown pid: %q", desc)
	}
	if _, desc := qga(t, c, "guest-exec-write", map[string]any{"pid": 1, "input-data": "%%%"}); desc == "" {
		t.Fatal("bad base64 accepted")
	}
	raw, _ := json.Marshal(map[string]any{"execute": "guest-ping"})
	if r, _ := harness.Decode(t, call(t, c, string(raw))); r.Error != nil {
		t.Fatalf("ping after errors: %v", r.Error)
	}
}

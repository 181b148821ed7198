package conformance

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/guest-agent/guest-agent/tests/harness"
)

type exchange struct {
	name string
	req  string
	// sameDesc: the error description must be identical too.
	sameDesc bool
}

// coreRequests are the protocol-level requests every qga client relies on.
var coreRequests = []exchange{
	{"ping", `{"execute":"guest-ping"}`, false},
	{"ping with id", `{"execute":"guest-ping","id":{"k":[1,"a"]}}`, false},
	{"ping with empty arguments", `{"execute":"guest-ping","arguments":{}}`, false},
	{"sync", `{"execute":"guest-sync","arguments":{"id":1234}}`, false},
	{"sync-delimited", `{"execute":"guest-sync-delimited","arguments":{"id":99}}`, false},
	{"unknown command", `{"execute":"no-such-command"}`, true},
	{"unexpected parameter", `{"execute":"guest-ping","arguments":{"x":1}}`, true},
	{"missing parameter", `{"execute":"guest-sync","arguments":{}}`, true},
	{"wrong parameter type", `{"execute":"guest-sync","arguments":{"id":"one"}}`, true},
	{"unexpected member", `{"execute":"guest-ping","extra":1}`, true},
	{"not an object", `[1,2]`, true},
	{"scalar", `"string"`, true},
	{"execute not a string", `{"execute":5}`, true},
	{"arguments not an object", `{"execute":"guest-ping","arguments":[]}`, true},
	{"duplicate key", `{"execute":"guest-ping","execute":"guest-info"}`, true},
	{"lacks execute", `{"arguments":{}}`, true},
	{"bad JSON", `{bad json}`, false},
	{"error keeps id", `{"execute":"no-such-command","id":7}`, true},
}

func roundTrip(t *testing.T, c *harness.Conn, req string) []byte {
	t.Helper()
	line, err := c.Call(req + "\n")
	if err != nil {
		t.Fatalf("%s: %v", req, err)
	}
	return []byte(line)
}

func TestCoreConformance(t *testing.T) {
	ref := harness.MustDial(t, harness.StartQemuGA(t))
	ours := harness.MustDial(t, harness.StartAgent(t, harness.Options{}).Socket)
	for _, x := range coreRequests {
		t.Run(x.name, func(t *testing.T) {
			a, b := roundTrip(t, ours, x.req), roundTrip(t, ref, x.req)
			if (a[0] == 0xFF) != (b[0] == 0xFF) {
				t.Fatalf("delimiter differs: ours %q, qemu-ga %q", a, b)
			}
			a, b = bytes.TrimPrefix(a, []byte{0xFF}), bytes.TrimPrefix(b, []byte{0xFF})
			sa, err := replyShape(a)
			if err != nil {
				t.Fatal(err)
			}
			sb, err := replyShape(b)
			if err != nil {
				t.Fatal(err)
			}
			if sa != sb {
				t.Fatalf("shape differs:\n ours    %s  %s\n qemu-ga %s  %s", sa, a, sb, b)
			}
			if x.sameDesc {
				var ea, eb struct {
					Error struct{ Desc string } `json:"error"`
				}
				_ = json.Unmarshal(a, &ea)
				_ = json.Unmarshal(b, &eb)
				if ea.Error.Desc != eb.Error.Desc {
					t.Fatalf("error text differs:\n ours    %q\n qemu-ga %q", ea.Error.Desc, eb.Error.Desc)
				}
			}
		})
	}
	t.Run("guest-info entries", func(t *testing.T) {
		a, b := roundTrip(t, ours, `{"execute":"guest-info"}`), roundTrip(t, ref, `{"execute":"guest-info"}`)
		sa, _ := replyShape(a)
		sb, _ := replyShape(b)
		if sa != sb {
			t.Fatalf("guest-info shape differs:\n ours    %s\n qemu-ga %s", sa, sb)
		}
	})
	t.Run("blocked command", func(t *testing.T) {
		refB := harness.MustDial(t, harness.StartQemuGA(t, "-b", "guest-ping"))
		oursB := harness.MustDial(t, harness.StartAgent(t, harness.Options{Args: []string{"-b", "guest-ping"}}).Socket)
		a, b := roundTrip(t, oursB, `{"execute":"guest-ping"}`), roundTrip(t, refB, `{"execute":"guest-ping"}`)
		var ea, eb struct {
			Error struct{ Class, Desc string } `json:"error"`
		}
		if json.Unmarshal(a, &ea) != nil || json.Unmarshal(b, &eb) != nil || ea.Error != eb.Error || eb.Error.Class == "" {
			t.Fatalf("blocked command: ours %q, qemu-ga %q", a, b)
		}
	})
}

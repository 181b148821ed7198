package main

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
)

// fixedNow is the clock of the tests: backups and shadow's last-change day
// are predictable.
var fixedNow = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// testPlugin is a configured plugin on a temporary root.
type testPlugin struct {
	t    *testing.T
	n    *nova
	p    *sdk.CommandPlugin
	root string
}

// newTestPlugin configures a plugin with opts (root defaults to a fresh
// temporary directory).
func newTestPlugin(t *testing.T, opts map[string]any) *testPlugin {
	t.Helper()
	if opts == nil {
		opts = map[string]any{}
	}
	if _, ok := opts["root"]; !ok {
		opts["root"] = t.TempDir()
	}
	raw, err := json.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	n := newNova()
	n.now = func() time.Time { return fixedNow }
	p := n.plugin()
	logger := hclog.New(&hclog.LoggerOptions{Name: "cmd-nova", Level: hclog.Debug, Output: testLog{t}})
	if err := p.Configure(sdk.Config{Options: raw, Logger: logger}); err != nil {
		t.Fatal(err)
	}
	return &testPlugin{t: t, n: n, p: p, root: opts["root"].(string)}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(b []byte) (int, error) {
	defer func() { _ = recover() }()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// run calls a command the way the nova dialect does: {"value": value}.
func (tp *testPlugin) run(command string, value any) (json.RawMessage, *pb.Error) {
	tp.t.Helper()
	args := []byte(`{}`)
	if value != nil {
		var v json.RawMessage
		if raw, ok := value.(json.RawMessage); ok {
			v = raw
		} else {
			b, err := json.Marshal(value)
			if err != nil {
				tp.t.Fatal(err)
			}
			v = b
		}
		args, _ = json.Marshal(map[string]json.RawMessage{"value": v})
	}
	resp := tp.p.Run(context.Background(), &pb.RunRequest{Command: command, ArgsJson: args})
	return resp.ResultJson, resp.Error
}

// ok runs a command that must succeed with a plain string message.
func (tp *testPlugin) ok(command string, value any) string {
	tp.t.Helper()
	res, perr := tp.run(command, value)
	if perr != nil {
		tp.t.Fatalf("%s: %s: %s", command, perr.Class, perr.Desc)
	}
	var s string
	if err := json.Unmarshal(res, &s); err != nil {
		tp.t.Fatalf("%s: result %s is not a string", command, res)
	}
	return s
}

// fails runs a command that must fail; it returns the error text.
func (tp *testPlugin) fails(command string, value any) string {
	tp.t.Helper()
	res, perr := tp.run(command, value)
	if perr == nil {
		tp.t.Fatalf("%s succeeded: %s", command, res)
	}
	return perr.Desc
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dirOf(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func dirOf(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

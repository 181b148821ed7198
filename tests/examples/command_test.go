package examples

import (
	"encoding/json"
	"testing"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// examples/command-hello answers through the agent, is listed by
// guest-info, and validates its arguments with qemu-ga's texts.
func TestCommandHello(t *testing.T) {
	a := harness.StartAgent(t, harness.Options{PluginDir: pluginDir})
	c := harness.MustDial(t, a.Socket)

	line, err := c.Call(`{"execute":"guest-hello","arguments":{"name":"host"}}` + "\n")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := harness.Decode(t, line)
	var got struct{ Greeting string }
	if r.Error != nil || json.Unmarshal(r.Return, &got) != nil || got.Greeting != "hello, host" {
		t.Fatalf("guest-hello: %q", line)
	}

	for args, want := range map[string]string{
		`{}`:           "Parameter 'name' is missing",
		`{"name":""}`:  "name must not be empty",
		`{"name":7}`:   "Invalid parameter type for 'name', expected: string",
		`{"nmae":"x"}`: "Parameter 'nmae' is unexpected",
	} {
		line, err := c.Call(`{"execute":"guest-hello","arguments":` + args + "}\n")
		if err != nil {
			t.Fatal(err)
		}
		r, _ := harness.Decode(t, line)
		if r.Error == nil || r.Error.Class != "GenericError" || r.Error.Desc != want {
			t.Errorf("guest-hello %s: want GenericError %q, got %q", args, want, line)
		}
	}

	line, err = c.Call(`{"execute":"guest-info"}` + "\n")
	if err != nil {
		t.Fatal(err)
	}
	r, _ = harness.Decode(t, line)
	var info struct {
		Commands []struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
		} `json:"supported_commands"`
	}
	if err := json.Unmarshal(r.Return, &info); err != nil {
		t.Fatalf("guest-info: %q", line)
	}
	listed := false
	for _, cmd := range info.Commands {
		listed = listed || (cmd.Name == "guest-hello" && cmd.Enabled)
	}
	if !listed {
		t.Fatalf("guest-info does not list guest-hello enabled: %s", r.Return)
	}
}

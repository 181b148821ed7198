package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCommandMonitorOneLine(t *testing.T) {
	cfg, err := Parse("agent.hcl", []byte("command_monitor { enabled = true }\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.ExpandCommandMonitor()
	if cfg.CommandMonitor != nil || len(cfg.Channels) != 1 {
		t.Fatalf("expanded: %+v", cfg)
	}
	ch := cfg.Channels[0]
	if ch.Name != "monitor" || ch.Method != "unix-listen" || ch.Path != "/run/guest-agent/commands.sock" || ch.Dialect != "monitor" {
		t.Errorf("channel %+v", ch)
	}
	if d, err := ch.RequestDeadline(); err != nil || d != 10*time.Second {
		t.Errorf("request timeout %v, %v", d, err)
	}
	opts, err := OptionsJSON(ch.Options)
	if err != nil || string(opts) != `{"max_connections":16,"socket_mode":"0770"}` {
		t.Errorf("options %s, %v", opts, err)
	}
	// No allow: the default policy of a local channel, written out.
	if len(ch.Allow) != 8 {
		t.Errorf("the expanded channel's allow: %v", ch.Allow)
	}
	rules := ch.Policy()
	if !slices.Equal(rules["*"], []string{"root"}) || !slices.Equal(rules["guest-get-osinfo"], []string{"*"}) || rules["guest-exec"] != nil {
		t.Errorf("default policy %v", rules)
	}
	// The configuration in effect shows the channel, and reads back the same.
	again, err := Parse("dump.hcl", cfg.Dump())
	if err != nil {
		t.Fatalf("%v\n%s", err, cfg.Dump())
	}
	if err := again.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := sameConfig(cfg, again); err != nil {
		t.Errorf("%v\n%s", err, cfg.Dump())
	}
}

func TestCommandMonitorOffByDefault(t *testing.T) {
	for _, src := range []string{"", "command_monitor {}\n", "command_monitor { enabled = false }\n"} {
		cfg, err := Parse("agent.hcl", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		cfg.ExpandCommandMonitor()
		if len(cfg.Channels) != 0 {
			t.Errorf("%q: channels %+v", src, cfg.Channels)
		}
	}
}

func TestCommandMonitorEveryOption(t *testing.T) {
	src := `
channel "qga" {
  method  = "virtio-serial"
  dialect = "qga"
}
command_monitor {
  enabled         = true
  path            = "/run/x/cmd.sock"
  socket_mode     = "0750"
  socket_group    = "0"
  request_timeout = "3s"
  max_connections = 4
  allow = { "guest-get-osinfo" = ["*"], "guest-fsfreeze-freeze" = ["root", "@root"] }
  block_rpcs = ["guest-exec"]
}
`
	cfg, err := Parse("agent.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.ExpandCommandMonitor()
	if len(cfg.Channels) != 2 || cfg.Channels[0].Name != "qga" {
		t.Fatalf("channels %+v", cfg.Channels)
	}
	ch := cfg.Channels[1]
	if ch.Path != "/run/x/cmd.sock" || ch.RequestTimeout != "3s" || !slices.Equal(ch.BlockRPCs, []string{"guest-exec"}) {
		t.Errorf("channel %+v", ch)
	}
	opts, _ := OptionsJSON(ch.Options)
	if string(opts) != `{"max_connections":4,"socket_group":"0","socket_mode":"0750"}` {
		t.Errorf("options %s", opts)
	}
	if p := ch.Policy(); len(p) != 2 || !slices.Equal(p["guest-fsfreeze-freeze"], []string{"root", "@root"}) {
		t.Errorf("policy %v", p)
	}
}

func TestPolicyErrors(t *testing.T) {
	for src, want := range map[string]string{
		"command_monitor {\n enabled = true\n allow = { \"guest-ping\" = [\"no-such-user-here\"] }\n}":                `user "no-such-user-here"`,
		"command_monitor {\n enabled = true\n allow = { \"guest-ping\" = [\"@no-such-group\"] }\n}":                   `group "no-such-group"`,
		"command_monitor {\n enabled = true\n socket_mode = \"0999\"\n}":                                              "socket_mode",
		"command_monitor {\n enabled = true\n request_timeout = \"soon\"\n}":                                          "request_timeout",
		"command_monitor { enabled = true }\nchannel \"monitor\" {\n method = \"unix-listen\"\n dialect = \"qga\"\n}": "declared twice",
		"channel \"local\" {\n method = \"unix-listen\"\n dialect = \"qga\"\n allow = { \"*\" = [\"\"] }\n}":          "empty caller",
	} {
		cfg, err := Parse("agent.hcl", []byte(src))
		if err != nil {
			t.Fatalf("%q: %v", src, err)
		}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
}

// A channel other than the monitor's has no policy unless it sets one.
func TestPolicyOnlyWhenAsked(t *testing.T) {
	qga := Channel{Name: "local", Dialect: "qga"}
	if qga.Policy() != nil {
		t.Errorf("qga channel policy %v", qga.Policy())
	}
	qga.Allow = map[string][]string{"guest-ping": {"*"}}
	if len(qga.Policy()) != 1 {
		t.Errorf("qga channel policy %v", qga.Policy())
	}
}

package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/zclconf/go-cty/cty"
)

// readmeConfig is the configuration README.md shows, every option set.
const readmeConfig = `state_dir           = "/var/lib/guest-agent"  # kept across reboots; may be frozen, so nothing needed while frozen lives here
runtime_dir         = "/run/guest-agent"      # a tmpfs: plugin sockets, frozen flags (never frozen, emptied by a reboot)
plugin_dirs         = ["/usr/lib/guest-agent/plugins", "/etc/guest-agent/plugins.d"]  # after --plugin-dir and guest-agent's
                                                    # own directory; the first holding a name wins; followed at run time
lazy_start          = true    # command plugins start on their first command
restart_backoff_max = "5s"    # cap of the delay between restarts of a crashing plugin

limits {
  max_request_bytes = 67108864  # one request (qemu-ga: 64 MiB); larger ones get an error, the channel goes on
  command_timeout   = "10m"     # one command
  max_sessions      = 64        # concurrent sessions per channel
  max_in_flight     = 64        # concurrent commands per session
  read_ahead_max_bytes = 1048576 # one guest-file-read batch read before the host asks (two in flight
                                 # per session); -1: no read-ahead
  fsfreeze_max      = "10m"     # the agent thaws a freeze that lasts longer, and logs why; "off": never
  session_memory_max = 201326592 # bytes held for one session: requests queued or running, replies
                                 # waiting or being written, the partial request; over it the session
                                 # reads nothing more until its replies went out
  channel_memory_max = 536870912 # the same for all sessions of a channel together
  write_timeout        = "60s"  # a peer that reads nothing of a reply this long: socket closed,
                                # virtio-serial reply dropped (the host resyncs); "off": none
  request_idle_timeout = "30s"  # a request whose next bytes do not come this long is discarded
                                # with an error; "off": none
}

channel "qga" {
  method  = "virtio-serial"
  path    = "/dev/virtio-ports/org.qemu.guest_agent.0"
  dialect = "qga"
  thaw_on_disconnect = false    # true: thaw when the host that froze the guest goes away
}
channel "local" {
  method     = "unix-listen"
  path       = "/run/guest-agent.sock"
  dialect    = "qga"
  allow_rpcs = ["guest-ping", "guest-info", "guest-get-osinfo"]
  options    = { socket_mode = "0660", socket_group = "adm", max_connections = 16 }
}

plugin "cmd-files" {
  checksum = "3f5a…"            # SHA-256 of the binary: refused if it differs
  # Roots created by root (install -d -m 0755 /srv/exchange), each opened once and checked: a path a
  # user other than root could change is refused unless allow_unsafe_roots = true.
  options  = { max_handles = 64, allowed_paths = ["/srv/exchange"] }
}
plugin "cmd-exec" {
  # With allowed_paths set, env may only set the variables of allowed_env (this is the default list);
  # LD_*, GCONV_PATH, PYTHON*, BASH_ENV and the like are refused unless listed by exact name.
  options = { max_output_bytes = 16777216, max_concurrent = 64, status_retention = "10m",
              allowed_paths = ["/usr/bin/systemctl"],
              allowed_env = ["PATH", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM", "HOME", "USER", "LOGNAME"] }
}
plugin "cmd-system" {
  # freeze.d: each executable runs with "freeze" in lexical order before the filesystems are frozen,
  # and with "thaw" in reverse order after they are thawed; a time limit each; "" disables it
  options = { fsfreeze_hook_dir = "/etc/guest-agent/freeze.d", fsfreeze_hook_timeout_seconds = 60,
              helper_timeout_seconds = 300 }
}
plugin "cmd-network" { disabled = true }
`

// FuzzConfig: any file given as the configuration parses or fails, never a
// panic; what parses validates or fails without one; its dump (-D, config
// dump) parses back to the same configuration, dumps the same again and
// validates the same way; every options block converts to JSON.
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		readmeConfig,
		``,
		`state_dir = "/var/lib/guest-agent"`,
		`channel "qga" { method = "virtio-serial" }`,
		`channel "a" { method = "x" dialect = "qga" }` + "\n" + `channel "a" { method = "y" dialect = "qga" }`,
		"limits {\n command_timeout = \"10x\"\n}",
		"limits {\n fsfreeze_max = \"-1s\"\n}",
		"limits {\n write_timeout = \"off\"\n request_idle_timeout = \"0\"\n}",
		"restart_backoff_max = \"5\"",
		"plugin \"p\" {\n options = { a = [1, \"x\", true, null], b = { c = 1.5e300 }, \"d e\" = \"${x}\" }\n}",
		"plugin \"p\" {\n options = { s = \"$${literal} %{ if true }\" }\n}",
		"plugin \"p\" {\n options = null\n}",
		"plugin \"p\" {\n options = \"just a string\"\n}",
		"channel \"c\" {\n method = \"m\"\n dialect = \"qga\"\n options = { n = 1 + 2, s = upper(\"x\") }\n}",
		"channel \"\\u00e9\\n\" {\n method = \"m\"\n dialect = \"q\\\"\"\n}",
		"lazy_start = false\nplugin_dirs = [\"/a\", \"\"]",
		"limits { max_request_bytes = 1e3 }",
		"limits { max_request_bytes = 1.5 }",
		"limits { max_request_bytes = 99999999999999999999 }",
		"state_dir = <<EOT\nline\nEOT\n",
		"\xff = 1",
		"a = 1",
		"command_monitor { enabled = true }",
		"command_monitor {\n enabled = true\n socket_mode = \"0750\"\n socket_group = \"adm\"\n request_timeout = \"2s\"\n allow = { \"*\" = [\"root\"], \"guest-get-osinfo\" = [\"*\", \"@0\"] }\n}",
		"channel \"m\" {\n method = \"unix-listen\"\n dialect = \"monitor\"\n allow = { \"guest-ping\" = [\"nosuchuser\"] }\n request_timeout = \"-1s\"\n}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Parse("agent.hcl", src)
		if err != nil {
			return
		}
		verr := cfg.Validate()
		dump := cfg.Dump()
		again, err := Parse("dump.hcl", dump)
		if err != nil {
			t.Fatalf("%q parsed, but its dump does not:\n%s\n%v", src, dump, err)
		}
		if dump2 := again.Dump(); !bytes.Equal(dump, dump2) {
			t.Fatalf("%q: the dump of the dump differs:\n%s\n---\n%s", src, dump, dump2)
		}
		if verr2 := again.Validate(); fmt.Sprint(verr) != fmt.Sprint(verr2) {
			t.Fatalf("%q validates as %v, its dump as %v", src, verr, verr2)
		}
		if err := sameConfig(cfg, again); err != nil {
			t.Fatalf("%q: the dump parses to another configuration: %v\n%s", src, err, dump)
		}
		for _, v := range optionValues(cfg) {
			b, err := OptionsJSON(v)
			if err == nil && !json.Valid(b) {
				t.Fatalf("%q: options %#v give %q, not JSON", src, v, b)
			}
		}
	})
}

func optionValues(c *Agent) []cty.Value {
	var out []cty.Value
	for _, ch := range c.Channels {
		out = append(out, ch.Options)
	}
	for _, p := range c.Plugins {
		out = append(out, p.Options)
	}
	return out
}

// sameConfig compares two configurations field by field, options by value.
func sameConfig(a, b *Agent) error {
	sa, sb := *a, *b
	sa.Channels, sb.Channels, sa.Plugins, sb.Plugins = nil, nil, nil, nil
	if fmt.Sprintf("%#v", stripped(sa)) != fmt.Sprintf("%#v", stripped(sb)) {
		return fmt.Errorf("%#v != %#v", stripped(sa), stripped(sb))
	}
	if len(a.Channels) != len(b.Channels) || len(a.Plugins) != len(b.Plugins) {
		return fmt.Errorf("%d channels and %d plugins, then %d and %d", len(a.Channels), len(a.Plugins), len(b.Channels), len(b.Plugins))
	}
	for i := range a.Channels {
		x, y := a.Channels[i], b.Channels[i]
		ox, oy := x.Options, y.Options
		x.Options, y.Options = cty.NilVal, cty.NilVal
		if fmt.Sprintf("%#v", x) != fmt.Sprintf("%#v", y) || !sameValue(ox, oy) {
			return fmt.Errorf("channel %d: %#v %#v, then %#v %#v", i, x, ox, y, oy)
		}
	}
	for i := range a.Plugins {
		x, y := a.Plugins[i], b.Plugins[i]
		ox, oy := x.Options, y.Options
		x.Options, y.Options = cty.NilVal, cty.NilVal
		if fmt.Sprintf("%#v", x) != fmt.Sprintf("%#v", y) || !sameValue(ox, oy) {
			return fmt.Errorf("plugin %d: %#v %#v, then %#v %#v", i, x, ox, y, oy)
		}
	}
	return nil
}

// stripped makes pointers comparable by what they point to.
func stripped(c Agent) any {
	lazy := "unset"
	if c.LazyStart != nil {
		lazy = fmt.Sprint(*c.LazyStart)
	}
	var limits any = "unset"
	if c.Limits != nil {
		limits = *c.Limits
	}
	var monitor any = "unset"
	if c.CommandMonitor != nil {
		monitor = *c.CommandMonitor
	}
	c.LazyStart, c.Limits, c.CommandMonitor = nil, nil, nil
	return []any{c, lazy, limits, monitor}
}

// sameValue tells two option values apart by what a plugin receives.
func sameValue(a, b cty.Value) bool {
	if a.IsNull() || b.IsNull() {
		return a.IsNull() == b.IsNull()
	}
	ja, ea := OptionsJSON(a)
	jb, eb := OptionsJSON(b)
	return fmt.Sprint(ea) == fmt.Sprint(eb) && bytes.Equal(ja, jb)
}

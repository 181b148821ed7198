// Package config reads the agent's HCL configuration
// (/etc/guest-agent/agent.hcl) and applies qemu-ga style flags over it.
package config

import (
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsimple"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// DefaultPath is where the configuration is read from unless -c says
// otherwise; a missing default file is not an error.
const DefaultPath = "/etc/guest-agent/agent.hcl"

// DefaultPluginDirs are plugin_dirs unless configured: searched after
// --plugin-dir and the directory of the guest-agent binary.
var DefaultPluginDirs = []string{"/usr/lib/guest-agent/plugins", "/etc/guest-agent/plugins.d"}

// Agent is the agent's whole configuration: agent.hcl with the flags applied over it
// (a plugin's own configuration is sdk.Config, what the agent hands it).
type Agent struct {
	// StateDir is kept across reboots (default /var/lib/guest-agent). It
	// may lie on a filesystem the guest freezes, so nothing the agent needs
	// while frozen lives there.
	StateDir string `hcl:"state_dir,optional"`
	// RuntimeDir holds the plugin sockets and the frozen flags (default
	// /run/guest-agent): a tmpfs, so it is never frozen and a reboot
	// empties it.
	RuntimeDir string `hcl:"runtime_dir,optional"`
	// PluginDirs are searched for plugins after --plugin-dir and the
	// directory of guest-agent, in order (the first holding a name wins),
	// and followed while the agent runs (default DefaultPluginDirs).
	PluginDirs []string `hcl:"plugin_dirs,optional"`
	PidFile    string   `hcl:"pidfile,optional"`
	LogFile    string   `hcl:"logfile,optional"`
	LogLevel   string   `hcl:"log_level,optional"`
	// LazyStart starts command plugins on their first command (default on):
	// plugins nobody calls cost no memory.
	LazyStart *bool `hcl:"lazy_start,optional"`
	// PluginIdleExit stops a lazily started command plugin that has had
	// nothing to do this long and holds nothing a later command needs
	// (default "30s"; "off": never). Its next command starts it again.
	PluginIdleExit string `hcl:"plugin_idle_exit,optional"`
	// PluginTLS runs go-plugin's AutoMTLS between the supervisor and each
	// plugin (default off): the plugin sockets lie in the runtime
	// directory, mode 0700, which only root can reach, and root could read
	// the certificates go-plugin hands over in the environment anyway;
	// under TCG the two certificates of each plugin (P-521) cost seconds
	// of boot.
	PluginTLS bool `hcl:"plugin_tls,optional"`
	// RestartBackoffMax caps the delay between restarts of a plugin that
	// keeps crashing (default "5s"); the first three crashes within 30 s
	// restart at once.
	RestartBackoffMax string `hcl:"restart_backoff_max,optional"`

	Limits *Limits `hcl:"limits,block"`
	// CommandMonitor is the local socket of the Google guest agent's
	// command monitor, for programs inside the guest (off by default).
	CommandMonitor *CommandMonitor `hcl:"command_monitor,block"`
	// HostRelay holds negotiator's guest-to-host port for the guest's
	// programs (off by default; see hostrelay.go).
	HostRelay *HostRelay `hcl:"negotiator_host,block"`
	Channels  []Channel  `hcl:"channel,block"`
	Plugins   []Plugin   `hcl:"plugin,block"`
}

// Limits bound what a host can make the guest allocate.
type Limits struct {
	// MaxRequestBytes bounds one request (qemu-ga: 64 MiB).
	MaxRequestBytes int64 `hcl:"max_request_bytes,optional"`
	// CommandTimeout bounds one command, e.g. "10m".
	CommandTimeout string `hcl:"command_timeout,optional"`
	// MaxSessions bounds concurrent sessions per channel.
	MaxSessions int64 `hcl:"max_sessions,optional"`
	// MaxInFlight bounds concurrent commands per session.
	MaxInFlight int64 `hcl:"max_in_flight,optional"`
	// ReadAheadMaxBytes bounds the result a session reads ahead of the host
	// (guest-file-read); 0: 1 MiB, negative: no read-ahead.
	ReadAheadMaxBytes int64 `hcl:"read_ahead_max_bytes,optional"`
	// FsfreezeMax bounds how long the guest stays frozen before the agent
	// thaws it on its own, e.g. "10m" (the default); "0" or "off": no limit.
	FsfreezeMax string `hcl:"fsfreeze_max,optional"`
	// SessionMemoryMax and ChannelMemoryMax bound the bytes held for one
	// session and for all sessions of a channel (requests queued or
	// running, replies being written, a partial request): over either, a
	// session reads nothing more until replies have gone out. Defaults
	// 192 MiB and 512 MiB.
	SessionMemoryMax int64 `hcl:"session_memory_max,optional"`
	ChannelMemoryMax int64 `hcl:"channel_memory_max,optional"`
	// WriteTimeout: a peer that reads nothing of a reply for this long has
	// stopped reading (socket: session closed; virtio-serial: reply
	// dropped). RequestIdleTimeout: a request whose next bytes do not come
	// for this long is discarded with an error. Defaults "60s" and "30s";
	// "off": no limit.
	WriteTimeout       string `hcl:"write_timeout,optional"`
	RequestIdleTimeout string `hcl:"request_idle_timeout,optional"`
}

// Channel pairs an exchange method with a parser dialect.
type Channel struct {
	Name      string   `hcl:"name,label"`
	Method    string   `hcl:"method"`
	Path      string   `hcl:"path,optional"`
	Dialect   string   `hcl:"dialect,optional"`
	AllowRPCs []string `hcl:"allow_rpcs,optional"`
	BlockRPCs []string `hcl:"block_rpcs,optional"`
	// ThawOnDisconnect thaws the guest when the host that froze it through
	// this channel disconnects while it is frozen (off by default, as
	// qemu-ga: libvirt's snapshot flow keeps its connection open).
	ThawOnDisconnect bool `hcl:"thaw_on_disconnect,optional"`
	// Allow is the channel's policy per caller: command ("*": every
	// command) to the callers who may call it ("*", a user or uid,
	// "@group" or "@gid"; see shared/policy). Unset: no policy, except on
	// a monitor channel, which then has policy.DefaultRules.
	Allow map[string][]string `hcl:"allow,optional"`
	// RequestTimeout (monitor dialect): a connection must have sent its
	// whole request within this time, e.g. "10s" (the default).
	RequestTimeout string    `hcl:"request_timeout,optional"`
	Options        cty.Value `hcl:"options,optional"`
}

// Plugin holds per-plugin settings.
type Plugin struct {
	Name     string    `hcl:"name,label"`
	Disabled bool      `hcl:"disabled,optional"`
	Checksum string    `hcl:"checksum,optional"` // SHA-256, hex: the binary must match
	Options  cty.Value `hcl:"options,optional"`
}

// Load reads path; a missing file at the default path yields an empty
// configuration.
func Load(path string, explicit bool) (*Agent, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) && !explicit {
			return &Agent{}, nil
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return Parse(path, src)
}

// Parse decodes a configuration from src; filename names it in errors.
func Parse(filename string, src []byte) (*Agent, error) {
	cfg := &Agent{}
	if err := hclsimple.Decode(filename, src, nil, cfg); err != nil {
		return nil, fmt.Errorf("config %s: %w", filename, err)
	}
	return cfg, nil
}

// OptionsJSON converts an HCL options object to JSON for a plugin.
func OptionsJSON(v cty.Value) ([]byte, error) {
	if v.IsNull() || !v.IsKnown() {
		return []byte("{}"), nil
	}
	b, err := ctyjson.Marshal(v, v.Type())
	if err != nil {
		return nil, fmt.Errorf("options: %w", err)
	}
	return b, nil
}

// WithOption returns options with one more member set (flags such as -F
// land in a plugin's options this way).
func WithOption(v cty.Value, key string, val cty.Value) cty.Value {
	m := map[string]cty.Value{}
	if !v.IsNull() && v.IsKnown() && (v.Type().IsObjectType() || v.Type().IsMapType()) {
		for k, e := range v.AsValueMap() {
			m[k] = e
		}
	}
	m[key] = val
	return cty.ObjectVal(m)
}

// PluginByName returns the plugin block for name, creating it if needed.
func (c *Agent) PluginByName(name string) *Plugin {
	for i := range c.Plugins {
		if c.Plugins[i].Name == name {
			return &c.Plugins[i]
		}
	}
	c.Plugins = append(c.Plugins, Plugin{Name: name, Options: cty.NullVal(cty.DynamicPseudoType)})
	return &c.Plugins[len(c.Plugins)-1]
}

// Timeout returns limits.command_timeout, 0 for the default.
func (l *Limits) Timeout() (time.Duration, error) {
	if l == nil || l.CommandTimeout == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(l.CommandTimeout)
	if err != nil {
		return 0, fmt.Errorf("limits.command_timeout: %w", err)
	}
	return d, nil
}

// Dump renders the effective configuration as HCL (-D / config dump).
func (c *Agent) Dump() []byte {
	f := hclwrite.NewEmptyFile()
	gohcl.EncodeIntoBody(c, f.Body())
	return f.Bytes()
}

// Validate checks what HCL cannot.
func (c *Agent) Validate() error {
	seen := map[string]bool{}
	for _, ch := range c.Channels {
		if seen[ch.Name] {
			return fmt.Errorf("channel %q is declared twice", ch.Name)
		}
		seen[ch.Name] = true
		if ch.Dialect == "" {
			return fmt.Errorf("channel %q: dialect is required", ch.Name)
		}
		if err := ch.validatePolicy(); err != nil {
			return err
		}
	}
	if err := c.validateMonitor(); err != nil {
		return err
	}
	if err := c.validateHostRelay(); err != nil {
		return err
	}
	if _, err := c.Limits.Timeout(); err != nil {
		return err
	}
	if _, err := c.Limits.FreezeMax(); err != nil {
		return err
	}
	if _, _, err := c.Limits.Deadlines(); err != nil {
		return err
	}
	if l := c.Limits; l != nil {
		maxReq := l.MaxRequestBytes
		if maxReq <= 0 {
			maxReq = 64 << 20
		}
		// A request must fit in the budget, or its session would wait
		// for room that only the rest of that request could make.
		if l.SessionMemoryMax > 0 && l.SessionMemoryMax < maxReq+1<<20 {
			return fmt.Errorf("limits.session_memory_max (%d) must exceed max_request_bytes (%d) by 1 MiB at least", l.SessionMemoryMax, maxReq)
		}
		if l.ChannelMemoryMax > 0 && l.SessionMemoryMax > 0 && l.ChannelMemoryMax < l.SessionMemoryMax {
			return fmt.Errorf("limits.channel_memory_max (%d) must not be below session_memory_max (%d)", l.ChannelMemoryMax, l.SessionMemoryMax)
		}
	}
	if _, err := c.BackoffMax(); err != nil {
		return err
	}
	if _, err := c.IdleExit(); err != nil {
		return err
	}
	return nil
}

// DefaultPluginIdleExit is how long an idle command plugin stays unless
// configured.
const DefaultPluginIdleExit = 30 * time.Second

// IdleExit returns plugin_idle_exit; 0 means never.
func (c *Agent) IdleExit() (time.Duration, error) {
	switch c.PluginIdleExit {
	case "":
		return DefaultPluginIdleExit, nil
	case "off":
		return 0, nil
	}
	d, err := time.ParseDuration(c.PluginIdleExit)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("plugin_idle_exit: %q is not a positive duration (e.g. \"30s\") or \"off\"", c.PluginIdleExit)
	}
	return d, nil
}

// optionalDuration parses a duration limit: "" is 0 (the default), "off"
// is -1 (no limit).
func optionalDuration(name, v string) (time.Duration, error) {
	switch v {
	case "":
		return 0, nil
	case "off":
		return -1, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("limits.%s: %q is not a positive duration (e.g. \"30s\") or \"off\"", name, v)
	}
	return d, nil
}

// Deadlines returns write_timeout and request_idle_timeout: 0 for the
// default, -1 for none.
func (l *Limits) Deadlines() (write, requestIdle time.Duration, err error) {
	if l == nil {
		return 0, 0, nil
	}
	if write, err = optionalDuration("write_timeout", l.WriteTimeout); err != nil {
		return 0, 0, err
	}
	requestIdle, err = optionalDuration("request_idle_timeout", l.RequestIdleTimeout)
	return write, requestIdle, err
}

// DefaultCommandTimeout is limits.command_timeout unless configured (the
// parsers apply the same default when given none).
const DefaultCommandTimeout = 10 * time.Minute

// DefaultFsfreezeMax is how long a freeze may last unless configured.
const DefaultFsfreezeMax = 10 * time.Minute

// FreezeMax returns the freeze deadline; 0 means none.
func (l *Limits) FreezeMax() (time.Duration, error) {
	if l == nil || l.FsfreezeMax == "" {
		return DefaultFsfreezeMax, nil
	}
	if l.FsfreezeMax == "off" || l.FsfreezeMax == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(l.FsfreezeMax)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("limits.fsfreeze_max: %q is not a duration (e.g. \"10m\", or \"off\")", l.FsfreezeMax)
	}
	return d, nil
}

// BackoffMax returns the restart backoff cap.
func (c *Agent) BackoffMax() (time.Duration, error) {
	if c.RestartBackoffMax == "" {
		return 5 * time.Second, nil
	}
	d, err := time.ParseDuration(c.RestartBackoffMax)
	if err != nil {
		return 0, fmt.Errorf("restart_backoff_max: %w", err)
	}
	return d, nil
}

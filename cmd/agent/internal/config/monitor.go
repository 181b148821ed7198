package config

import (
	"fmt"
	"strconv"
	"time"

	"github.com/guest-agent/guest-agent/shared/policy"
	"github.com/zclconf/go-cty/cty"
)

// The command monitor's defaults: the Google guest agent's, except the
// directory (/run/google-guest-agent there).
const (
	MonitorChannelName     = "monitor"
	MonitorDialect         = "monitor"
	DefaultMonitorPath     = "/run/guest-agent/commands.sock"
	DefaultMonitorMode     = "0770"
	DefaultRequestTimeout  = 10 * time.Second
	monitorMethod          = "unix-listen"
	defaultMonitorMaxConns = 16
)

// CommandMonitor is the local socket through which programs inside the
// guest call the agent's commands, as the Google guest agent's command
// monitor (command_monitor_enabled, command_pipe_path, command_pipe_mode,
// command_pipe_group, command_request_timeout there). One line enables it:
//
//	command_monitor { enabled = true }
type CommandMonitor struct {
	Enabled bool `hcl:"enabled,optional"`
	// Path of the socket (default /run/guest-agent/commands.sock).
	Path string `hcl:"path,optional"`
	// SocketMode is octal (default "0770"); SocketGroup a group name or
	// gid (default: root's group).
	SocketMode  string `hcl:"socket_mode,optional"`
	SocketGroup string `hcl:"socket_group,optional"`
	// RequestTimeout: a connection must have sent its whole request
	// within this time (default "10s"); it then gets Status 104.
	RequestTimeout string `hcl:"request_timeout,optional"`
	// MaxConnections bounds the connections served at once (default 16).
	MaxConnections int64 `hcl:"max_connections,optional"`
	// Allow is the policy per caller (see Channel.Allow); unset: anyone
	// may call the read-only commands of policy.ReadOnlyCommands, root
	// every command.
	Allow     map[string][]string `hcl:"allow,optional"`
	AllowRPCs []string            `hcl:"allow_rpcs,optional"`
	BlockRPCs []string            `hcl:"block_rpcs,optional"`
}

// ExpandCommandMonitor turns an enabled command_monitor block into the
// channel it stands for, beside the others (the host's qga channel keeps
// running), and drops the block: the configuration in effect (config dump)
// then shows the channel with every default written out.
func (c *Agent) ExpandCommandMonitor() {
	m := c.CommandMonitor
	if m == nil {
		return
	}
	c.CommandMonitor = nil
	if !m.Enabled {
		return
	}
	ch := Channel{
		Name:           MonitorChannelName,
		Method:         monitorMethod,
		Path:           orString(m.Path, DefaultMonitorPath),
		Dialect:        MonitorDialect,
		AllowRPCs:      m.AllowRPCs,
		BlockRPCs:      m.BlockRPCs,
		Allow:          m.Allow,
		RequestTimeout: orString(m.RequestTimeout, DefaultRequestTimeout.String()),
	}
	opts := map[string]cty.Value{
		"socket_mode":     cty.StringVal(orString(m.SocketMode, DefaultMonitorMode)),
		"max_connections": cty.NumberIntVal(defaultMonitorMaxConns),
	}
	if m.MaxConnections != 0 {
		opts["max_connections"] = cty.NumberIntVal(m.MaxConnections)
	}
	if m.SocketGroup != "" {
		opts["socket_group"] = cty.StringVal(m.SocketGroup)
	}
	ch.Options = cty.ObjectVal(opts)
	if ch.Allow == nil {
		ch.Allow = policy.DefaultRules() // written out: config dump shows the policy in effect
	}
	c.Channels = append(c.Channels, ch)
}

// Policy is the channel's policy per caller: its allow map, or on a
// monitor channel without one the default; nil means none (every caller
// may call every enabled command, as on the host's channels).
func (ch *Channel) Policy() map[string][]string {
	if ch.Allow != nil {
		return ch.Allow
	}
	if ch.Dialect == MonitorDialect {
		return policy.DefaultRules()
	}
	return nil
}

// RequestDeadline returns the channel's request_timeout; 0 for the
// default.
func (ch *Channel) RequestDeadline() (time.Duration, error) {
	if ch.RequestTimeout == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(ch.RequestTimeout)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("channel %q: request_timeout %q is not a positive duration (e.g. \"10s\")", ch.Name, ch.RequestTimeout)
	}
	return d, nil
}

// validateMonitor checks what the command_monitor block will become.
func (c *Agent) validateMonitor() error {
	m := c.CommandMonitor
	if m == nil || !m.Enabled {
		return nil
	}
	for _, ch := range c.Channels {
		if ch.Name == MonitorChannelName {
			return fmt.Errorf("channel %q is declared twice: command_monitor declares it", MonitorChannelName)
		}
	}
	if m.SocketMode != "" {
		if v, err := strconv.ParseUint(m.SocketMode, 8, 32); err != nil || v > 0o777 {
			return fmt.Errorf("command_monitor.socket_mode %q is not an octal permission like \"0770\"", m.SocketMode)
		}
	}
	if m.MaxConnections < 0 {
		return fmt.Errorf("command_monitor.max_connections must not be negative")
	}
	probe := Channel{Name: MonitorChannelName, Dialect: MonitorDialect, RequestTimeout: m.RequestTimeout, Allow: m.Allow}
	return probe.validatePolicy()
}

// validatePolicy checks the channel's request_timeout and resolves its
// policy's users and groups: a name that does not exist is an error now,
// not a caller refused later without a word.
func (ch *Channel) validatePolicy() error {
	if _, err := ch.RequestDeadline(); err != nil {
		return err
	}
	if rules := ch.Allow; rules != nil {
		if _, err := policy.Parse(rules, policy.Resolver{}); err != nil {
			return fmt.Errorf("channel %q: %w", ch.Name, err)
		}
	}
	return nil
}

func orString(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

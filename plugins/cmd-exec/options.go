package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/guest-agent/guest-agent/shared/negotiator"
)

// options is the plugin's block of the agent configuration.
type options struct {
	// MaxOutputBytes caps what is kept of each captured stream of one
	// guest-exec (qemu-ga: 16 MiB); the rest is read and dropped, and
	// out-truncated / err-truncated say so. Also caps the output of an
	// `execute` command.
	MaxOutputBytes int64 `json:"max_output_bytes"`
	// StatusRetention is how long the record of a finished process is kept
	// for guest-exec-status when nobody asks for it (qemu-ga: forever).
	StatusRetention duration `json:"status_retention"`
	// MaxConcurrent is how many guest-exec (and execute) children may be
	// running at once (qemu-ga: no limit).
	MaxConcurrent int `json:"max_concurrent"`
	// AllowedPaths, when not empty, lists the only executables guest-exec
	// may start (absolute paths, compared after the PATH lookup and the
	// kernel's resolution of the directory; see confine.go).
	AllowedPaths []string `json:"allowed_paths"`
	// AllowedEnv lists the environment variables a guest-exec `env` may
	// set: names, or prefixes ending in '*'. Unset (nil) means
	// defaultAllowedEnv when AllowedPaths is set, anything otherwise.
	AllowedEnv *[]string `json:"allowed_env"`
	// CommandsDir holds negotiator-style user-defined commands: every
	// executable file in it is listed by list-commands and run by execute
	// (default negotiator's /usr/lib/negotiator/commands).
	CommandsDir string `json:"commands_dir"`
	// ExecuteTimeout bounds one execute command (negotiator's 10 s); 0
	// disables it (the request's command_timeout still applies).
	ExecuteTimeout duration `json:"execute_timeout"`
	// KillOnExit kills the children's process groups when the plugin stops
	// (SIGTERM or the supervisor's shutdown), and gives each child a
	// parent-death SIGKILL. Off by default: qemu-ga's children outlive it.
	KillOnExit bool `json:"kill_on_exit"`
	// AllowedUsers, when set, lists the users a guest-exec may run as with
	// its user and group arguments ("*": any). Unset: any user (running as
	// another user only drops the agent's privileges; allowed_paths and
	// allowed_env apply all the same).
	AllowedUsers *[]string `json:"allowed_users"`
	// StreamIdle is how long a host that reads a command's output with
	// guest-exec-read may stay silent before that output, held back for it
	// (flow control), is dropped past max_output_bytes again.
	StreamIdle duration `json:"stream_idle"`
}

const (
	defaultMaxOutputBytes  = 16 << 20
	defaultStatusRetention = 10 * time.Minute
	defaultMaxConcurrent   = 64
	defaultStreamIdle      = 30 * time.Second
)

func defaultOptions() options {
	return options{
		MaxOutputBytes:  defaultMaxOutputBytes,
		StatusRetention: duration(defaultStatusRetention),
		MaxConcurrent:   defaultMaxConcurrent,
		CommandsDir:     negotiator.DefaultUserCommandsDir,
		ExecuteTimeout:  duration(negotiator.DefaultTimeout * time.Second),
		StreamIdle:      duration(defaultStreamIdle),
	}
}

// decodeOptions decodes and checks the options; zero values take the
// defaults and unknown options are refused so that a typo is not silently
// ignored.
func decodeOptions(raw json.RawMessage) (options, error) {
	o := defaultOptions()
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return o, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return o, fmt.Errorf("cmd-exec options: %w", err)
	}
	if o.MaxOutputBytes == 0 {
		o.MaxOutputBytes = defaultMaxOutputBytes
	}
	if o.MaxOutputBytes < 0 {
		return o, fmt.Errorf("cmd-exec options: max_output_bytes must be positive, got %d", o.MaxOutputBytes)
	}
	if o.StatusRetention == 0 {
		o.StatusRetention = duration(defaultStatusRetention)
	}
	if o.StatusRetention < 0 {
		return o, fmt.Errorf("cmd-exec options: status_retention must be positive, got %s", time.Duration(o.StatusRetention))
	}
	if o.StreamIdle == 0 {
		o.StreamIdle = duration(defaultStreamIdle)
	}
	if o.StreamIdle < 0 {
		return o, fmt.Errorf("cmd-exec options: stream_idle must be positive, got %s", time.Duration(o.StreamIdle))
	}
	if o.MaxConcurrent == 0 {
		o.MaxConcurrent = defaultMaxConcurrent
	}
	if o.MaxConcurrent < 0 {
		return o, fmt.Errorf("cmd-exec options: max_concurrent must be positive, got %d", o.MaxConcurrent)
	}
	for i, p := range o.AllowedPaths {
		if !filepath.IsAbs(p) {
			return o, fmt.Errorf("cmd-exec options: allowed_paths[%d] %q is not an absolute path", i, p)
		}
		// Kept as written, not cleaned: its directory is resolved by the
		// kernel at each check ("link/.." through link's target).
		if _, name := splitProgram(p); name == "" || name == "." || name == ".." {
			return o, fmt.Errorf("cmd-exec options: allowed_paths[%d] %q does not name a file", i, p)
		}
	}
	if o.AllowedEnv != nil {
		for i, n := range *o.AllowedEnv {
			if err := checkEnvPattern(n); err != nil {
				return o, fmt.Errorf("cmd-exec options: allowed_env[%d]: %w", i, err)
			}
		}
	} else if len(o.AllowedPaths) > 0 {
		env := append([]string(nil), defaultAllowedEnv...)
		o.AllowedEnv = &env
	}
	if o.ExecuteTimeout < 0 {
		return o, fmt.Errorf("cmd-exec options: execute_timeout must not be negative, got %s", time.Duration(o.ExecuteTimeout))
	}
	if o.CommandsDir != "" && !filepath.IsAbs(o.CommandsDir) {
		return o, fmt.Errorf("cmd-exec options: commands_dir %q is not an absolute path", o.CommandsDir)
	}
	return o, nil
}

// duration accepts "10m"-style strings or a number of seconds.
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = duration(v)
		return nil
	}
	secs, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("duration %s: want a string like \"10m\" or a number of seconds", b)
	}
	*d = duration(secs * float64(time.Second))
	return nil
}

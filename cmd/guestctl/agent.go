package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/qga"
)

// agent is one open session with a guest's agent and what it serves.
type agent struct {
	*qga.Session
	commands map[string]bool // enabled commands of guest-info
	version  string
}

// openAgent connects to the --socket/--domain guest, resynchronises and
// reads guest-info, all within the exchange timeout.
func openAgent(ctx context.Context, o *options) (*agent, error) {
	a, err := openSession(ctx, o, o.socket)
	if err != nil {
		return nil, err
	}
	if err := a.loadInfo(ctx, o); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// openSession connects to socket and resynchronises, within the exchange
// timeout.
func openSession(ctx context.Context, o *options, socket string) (*agent, error) {
	cctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	s, err := qga.Open(cctx, socket, o.noSync)
	if err != nil {
		return nil, err
	}
	return &agent{Session: s}, nil
}

// loadInfo learns what the agent serves (guest-info).
func (a *agent) loadInfo(ctx context.Context, o *options) error {
	cctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	ret, err := a.Call(cctx, "guest-info", nil)
	if err != nil {
		return fmt.Errorf("guest-info: %w", err)
	}
	var info struct {
		Version  string `json:"version"`
		Commands []struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
		} `json:"supported_commands"`
	}
	if err := json.Unmarshal(ret, &info); err != nil {
		return fmt.Errorf("decode guest-info: %w", err)
	}
	a.commands, a.version = map[string]bool{}, info.Version
	for _, c := range info.Commands {
		if c.Enabled {
			a.commands[c.Name] = true
		}
	}
	return nil
}

// serves tells whether the agent serves every one of the commands.
func (a *agent) serves(names ...string) bool {
	for _, n := range names {
		if !a.commands[n] {
			return false
		}
	}
	return true
}

// call runs one command within the exchange timeout and decodes its
// result into v (when not nil).
func (a *agent) call(ctx context.Context, o *options, command string, args any, v any) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	ret, err := a.Call(ctx, command, args)
	if err != nil {
		return fmt.Errorf("%s: %w", command, err)
	}
	if v != nil {
		if err := json.Unmarshal(ret, v); err != nil {
			return fmt.Errorf("%s: decode %s: %w", command, ret, err)
		}
	}
	return nil
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

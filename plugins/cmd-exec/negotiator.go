package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/guest-agent/guest-agent/shared/negotiator"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

// negotiatorCommands are negotiator's guest-side methods: list_commands
// lists the executables of the commands directory and the built-in
// commands, execute runs one of them with arguments and optional standard
// input and returns its standard output; a non-zero exit is an error naming
// the command, its status and the tail of its stderr (negotiator 0.12.2).
func negotiatorCommands(ex *execer) []sdk.Command {
	return []sdk.Command{
		{
			Name:        "list-commands",
			Description: "List the user-defined commands (executables in commands_dir) and the built-in ones.",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     ex.handleListCommands,
		},
		{
			Name:        "execute",
			Description: "Run a user-defined or built-in command: command is its name then its arguments; returns its stdout (one line: stripped).",
			ArgsSchema: `{"type":"object","required":["command"],"additionalProperties":false,"properties":{` +
				`"command":{"type":"array","minItems":1,"items":{"type":"string"}},"input":{"type":"string"}}}`,
			Handler: ex.handleExecute,
		},
	}
}

func (e *execer) handleListCommands(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	names, err := e.negotiatorRunner(e.options()).List()
	if err != nil {
		return nil, fmt.Errorf("list-commands: %w", err)
	}
	return names, nil
}

// negotiatorRunner runs the executables of commands_dir, then the built-in
// commands negotiator ships (served natively by shared/negotiator).
func (e *execer) negotiatorRunner(opts options) *negotiator.Runner {
	r := &negotiator.Runner{
		Builtins:       negotiator.DefaultBuiltinSources().Builtins(),
		Timeout:        time.Duration(opts.ExecuteTimeout),
		MaxOutputBytes: opts.MaxOutputBytes,
		KillWithParent: opts.KillOnExit,
	}
	if opts.CommandsDir != "" {
		r.Dirs = []string{opts.CommandsDir}
	}
	return r
}

func (e *execer) handleExecute(ctx context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Command json.RawMessage `json:"command"`
		Input   *string         `json:"input"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	if a.Command == nil {
		return nil, sdk.Errorf("Parameter 'command' is missing")
	}
	argv, err := decodeStrList("command", a.Command)
	if err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		return nil, sdk.Errorf("Invalid parameter 'command'")
	}
	opts := e.options()
	if err := e.acquire(opts); err != nil {
		return nil, err
	}
	defer e.release()
	out, err := e.negotiatorRunner(opts).Execute(ctx, argv, a.Input, nil)
	if err != nil {
		e.log.Info("user-defined command failed", "command", argv[0], "error", err)
		return nil, sdk.Errorf("execute: %v", err)
	}
	return out, nil
}

// acquire takes a max_concurrent slot for a synchronous child.
func (e *execer) acquire(opts options) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closing {
		return sdk.Errorf("execute refused: cmd-exec is shutting down")
	}
	if e.running >= opts.MaxConcurrent {
		return sdk.Errorf("execute refused: %d commands are already running (max_concurrent is %d)", e.running, opts.MaxConcurrent)
	}
	e.running++
	return nil
}

func (e *execer) release() {
	e.mu.Lock()
	e.running--
	e.mu.Unlock()
}

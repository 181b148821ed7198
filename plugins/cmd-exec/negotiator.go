package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// negotiatorCommands are negotiator's guest-side methods: list_commands
// lists the executables of the commands directory, execute runs one of them
// with arguments and optional standard input and returns its standard
// output, or null when it exits non-zero (negotiator_common.NegotiatorInterface).
func negotiatorCommands(ex *execer) []sdk.Command {
	return []sdk.Command{
		{
			Name:        "list-commands",
			Description: "List the user-defined commands (executables in commands_dir).",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     ex.handleListCommands,
		},
		{
			Name:        "execute",
			Description: "Run a user-defined command: command is its name then its arguments; returns its stdout, or null on a non-zero exit.",
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
	dir := e.options().CommandsDir
	if dir == "" {
		return []string{}, nil
	}
	// Read at every call, like negotiator: dropping a script into the
	// directory needs no restart.
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return []string{}, nil
		}
		return nil, fmt.Errorf("list-commands: %w", err)
	}
	names := []string{}
	for _, ent := range entries {
		if _, err := commandPath(dir, ent.Name()); err == nil {
			names = append(names, ent.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// commandPath returns the executable of a user-defined command, refusing
// anything that is not a plain name of an executable regular file in dir.
func commandPath(dir, name string) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') || strings.HasPrefix(name, ".") {
		return "", fmt.Errorf("invalid command name %q", name)
	}
	p := filepath.Join(dir, name)
	fi, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file", p)
	}
	return p, nil
}

// stderrKeep is how much of a user-defined command's stderr goes to the log.
const stderrKeep = 4 << 10

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
	if opts.CommandsDir == "" {
		return nil, sdk.Errorf("execute: no user-defined commands (commands_dir is not set)")
	}
	path, err := commandPath(opts.CommandsDir, argv[0])
	if err != nil {
		return nil, sdk.Errorf("execute: unknown command '%s' (see list-commands)", argv[0])
	}
	if err := e.acquire(opts); err != nil {
		return nil, err
	}
	defer e.release()

	cmd := exec.CommandContext(ctx, path, argv[1:]...)
	cmd.Dir = "/"
	sys := &syscall.SysProcAttr{Setpgid: true}
	if opts.KillOnExit {
		sys.Pdeathsig = syscall.SIGKILL
	}
	cmd.SysProcAttr = sys
	// The request's deadline ends the whole command, not only its leader.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	if a.Input != nil {
		cmd.Stdin = strings.NewReader(*a.Input)
	}
	stdout := &limitedBuffer{limit: opts.MaxOutputBytes}
	stderr := &limitedBuffer{limit: stderrKeep}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err = cmd.Run()
	if stderr.Len() > 0 {
		e.log.Info("user-defined command wrote to stderr", "command", argv[0], "stderr", stderr.String())
	}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr) && ctx.Err() == nil:
		// negotiator: a non-zero exit returns None.
		e.log.Info("user-defined command failed", "command", argv[0], "status", exitErr.String())
		return json.RawMessage("null"), nil
	case ctx.Err() != nil:
		return nil, sdk.Errorf("execute: command '%s' did not finish in time: %v", argv[0], ctx.Err())
	default:
		return nil, sdk.Errorf("execute: command '%s': %v", argv[0], err)
	}
	if stdout.truncated {
		return nil, sdk.Errorf("execute: output of command '%s' exceeds %d bytes (max_output_bytes)", argv[0], opts.MaxOutputBytes)
	}
	return stdout.String(), nil
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

// limitedBuffer keeps the first limit bytes written and swallows the rest,
// so a chatty command never blocks on a full pipe.
// (Not embedding bytes.Buffer: its ReadFrom would let io.Copy bypass Write.)
type limitedBuffer struct {
	buf       bytes.Buffer
	limit     int64
	truncated bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	room := b.limit - int64(b.buf.Len())
	if int64(len(p)) > room {
		b.truncated = true
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *limitedBuffer) Len() int       { return b.buf.Len() }
func (b *limitedBuffer) String() string { return b.buf.String() }

package negotiator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Builtin is a command served in-process (negotiator ships these as
// scripts; see builtin.go).
type Builtin func(ctx context.Context, args []string) (string, error)

// Runner lists and runs the commands one side offers the other: the
// executables of its command directories, then its built-in commands.
type Runner struct {
	// Dirs are searched in order; a user-defined command hides a built-in
	// one of the same name, as in negotiator.
	Dirs []string
	// Builtins are the commands served without a program.
	Builtins map[string]Builtin
	// Timeout bounds one command (0: none); the command's whole process
	// group is killed when it expires.
	Timeout time.Duration
	// MaxOutputBytes bounds what is kept of a command's standard output;
	// more is an error (0: 16 MiB).
	MaxOutputBytes int64
	// KillWithParent gives each child a parent-death SIGKILL.
	KillWithParent bool
}

// DefaultMaxOutputBytes is the default of Runner.MaxOutputBytes.
const DefaultMaxOutputBytes = 16 << 20

// stderrTail is how much of a failed command's stderr its error quotes.
const stderrTail = 512

// List returns the names of the commands, sorted, each once. Directories
// are read at every call: a script dropped in needs no restart.
func (r *Runner) List() ([]string, error) {
	seen := map[string]bool{}
	for name := range r.Builtins {
		seen[name] = true
	}
	for _, dir := range r.Dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("list commands: %w", err)
		}
		for _, ent := range entries {
			if _, err := executableIn(dir, ent.Name()); err == nil {
				seen[ent.Name()] = true
			}
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// CommandName is the name a request's first word designates: its last
// path element, as negotiator takes os.path.basename, so "../../bin/sh"
// names "sh" in the command directories and nothing outside them.
func CommandName(word string) (string, error) {
	name := path.Base(word)
	if word == "" || name == "." || name == ".." || name == "/" || strings.HasPrefix(name, ".") {
		return "", fmt.Errorf("invalid command name %q", word)
	}
	return name, nil
}

// executableIn returns dir/name when it is an executable regular file.
func executableIn(dir, name string) (string, error) {
	if strings.HasPrefix(name, ".") || strings.ContainsRune(name, '/') {
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

// Execute runs argv[0] (its basename) with the other words as arguments,
// input on its standard input (nil: /dev/null) and env added to the
// environment, and returns its standard output shaped by ShapeOutput. A
// non-zero exit, a signal, the timeout or too much output is an error that
// names the command.
func (r *Runner) Execute(ctx context.Context, argv []string, input *string, env []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("no command given")
	}
	name, err := CommandName(argv[0])
	if err != nil {
		return "", err
	}
	if r.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.Timeout)
		defer cancel()
	}
	for _, dir := range r.Dirs {
		if p, err := executableIn(dir, name); err == nil {
			return r.run(ctx, name, p, argv[1:], input, env)
		}
	}
	if b, ok := r.Builtins[name]; ok {
		out, err := b(ctx, argv[1:])
		if err != nil {
			return "", fmt.Errorf("command '%s' failed: %w", name, err)
		}
		return ShapeOutput(out), nil
	}
	return "", fmt.Errorf("command '%s' not found (see list_commands)", name)
}

func (r *Runner) run(ctx context.Context, name, prog string, args []string, input *string, env []string) (string, error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = "/"
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	sys := &syscall.SysProcAttr{Setpgid: true}
	if r.KillWithParent {
		sys.Pdeathsig = syscall.SIGKILL
	}
	cmd.SysProcAttr = sys
	// The deadline ends the whole command, not only its leader.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	if input != nil {
		cmd.Stdin = strings.NewReader(*input)
	}
	limit := r.MaxOutputBytes
	if limit <= 0 {
		limit = DefaultMaxOutputBytes
	}
	stdout := &cappedBuffer{limit: limit}
	stderr := &tailBuffer{keep: stderrTail}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return "", fmt.Errorf("command '%s' did not finish in time (%v)", name, context.Cause(ctx))
	case errors.As(err, &exitErr):
		return "", fmt.Errorf("command '%s' failed: %s%s", name, describeExit(exitErr), stderr.quote())
	default:
		return "", fmt.Errorf("command '%s' could not run: %w", name, err)
	}
	if stdout.truncated {
		return "", fmt.Errorf("output of command '%s' exceeds %d bytes", name, limit)
	}
	return ShapeOutput(stdout.buf.String()), nil
}

func describeExit(e *exec.ExitError) string {
	if ws, ok := e.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
	}
	return fmt.Sprintf("exit status %d", e.ExitCode())
}

// ShapeOutput is what negotiator's callers get: a single line stripped of
// surrounding whitespace, several lines verbatim.
func ShapeOutput(out string) string {
	trimmed := strings.TrimSpace(out)
	if !strings.Contains(trimmed, "\n") {
		return trimmed
	}
	return out
}

// cappedBuffer keeps the first limit bytes and swallows the rest, so a
// chatty command never blocks on a full pipe.
type cappedBuffer struct {
	buf       bytes.Buffer
	limit     int64
	truncated bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
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

// tailBuffer keeps the last keep bytes written.
type tailBuffer struct {
	buf  []byte
	keep int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.keep {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.keep:]...)
	}
	return len(p), nil
}

// quote renders the tail of stderr for an error message.
func (t *tailBuffer) quote() string {
	s := t.buf
	if len(s) > t.keep {
		s = s[len(s)-t.keep:]
	}
	text := strings.TrimSpace(strings.ToValidUTF8(string(s), "\uFFFD"))
	if text == "" {
		return ""
	}
	return ": " + text
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

// errNotFound is returned by lookPath when a helper is not installed.
var errNotFound = errors.New("executable file not found")

// lookPath resolves a helper like execvp does: a name with a slash is used
// as is, a bare name is searched in HelperPath.
func (s *system) lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, dir := range filepath.SplitList(s.opts.HelperPath) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && unix.Access(p, unix.X_OK) == nil {
			return p, nil
		}
	}
	return "", errNotFound
}

// helperResult is what a finished helper left behind.
type helperResult struct {
	output   []byte // stdout and stderr, interleaved, capped
	exitCode int    // -1 when killed by a signal
	signaled bool
}

// startErr is a helper that could not be started (not found, not
// executable): qemu-ga's child reports it through perror before _exit(1).
type startErr struct {
	path string
	err  error
}

func (e *startErr) Error() string {
	return fmt.Sprintf("failed to exec '%s': %s", e.path, strerror(e.err))
}

// timeLimitError is the cause of a helper's end when it outlived its own
// time limit (not the request's deadline).
type timeLimitError struct{ limit time.Duration }

func (e *timeLimitError) Error() string {
	return fmt.Sprintf("killed with its process group after its time limit of %s", e.limit)
}

// execHelper runs argv in its own session (qemu-ga calls setsid() in the
// child) with stdin from input or /dev/null, stdout and stderr captured
// together, bounded by helper_timeout_seconds. No shell is involved: argv
// goes to execve as is.
func (s *system) execHelper(ctx context.Context, argv []string, input []byte) (*helperResult, error) {
	return s.execHelperLimit(ctx, argv, input, s.opts.helperTimeout())
}

// execHelperLimit is execHelper with a time limit of its own (0: none but
// the request's). A helper past it is killed with its whole session and the
// error wraps a *timeLimitError; the result then still holds its output.
func (s *system) execHelperLimit(ctx context.Context, argv []string, input []byte, limit time.Duration) (*helperResult, error) {
	path, err := s.lookPath(argv[0])
	if err != nil {
		return nil, &startErr{path: argv[0], err: unix.ENOENT}
	}
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, limit, &timeLimitError{limit: limit})
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, path, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The helper leads its own session: kill all of it, not only the direct
	// child, when the request is abandoned.
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	// A grandchild holding the output pipe (a daemonising shutdown) must not
	// keep the request waiting once the helper itself is gone.
	cmd.WaitDelay = 2 * time.Second
	if input != nil {
		cmd.Stdin = bytes.NewReader(input)
	}
	out := &cappedBuffer{limit: s.opts.MaxHelperOutputBytes}
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, &startErr{path: argv[0], err: pe.Err}
		}
		return nil, &startErr{path: argv[0], err: err}
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		// What it said before it was stopped goes with the error.
		return &helperResult{output: out.Bytes(), exitCode: -1, signaled: true},
			fmt.Errorf("helper %s stopped: %w", argv[0], context.Cause(ctx))
	}
	res := &helperResult{output: out.Bytes(), exitCode: cmd.ProcessState.ExitCode()}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.signaled = true
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) && !errors.Is(err, exec.ErrWaitDelay) {
		return nil, fmt.Errorf("wait for %s: %w", argv[0], err)
	}
	return res, nil
}

// runCommand is qemu-ga's ga_run_command(): run argv, and turn a failure
// into its error texts, which quote the helper's output.
func (s *system) runCommand(ctx context.Context, argv []string, input []byte, action string) error {
	s.log.Debug("running helper", "argv", argv, "action", action)
	res, err := s.execHelper(ctx, argv, input)
	if err != nil {
		var se *startErr
		if errors.As(err, &se) {
			// qemu-ga's child writes perror() text, newline included, to the
			// pipe the parent quotes.
			return sdk.Errorf("child process has failed to %s: %s\n", action, se.Error())
		}
		return sdk.Errorf("child process has failed to %s: %v", action, err)
	}
	if res.signaled {
		if len(res.output) > 0 {
			return sdk.Errorf("child process has terminated abnormally: %s", res.output)
		}
		return sdk.Errorf("child process has terminated abnormally")
	}
	if res.exitCode != 0 {
		if len(res.output) > 0 {
			return sdk.Errorf("child process has failed to %s: %s", action, res.output)
		}
		return sdk.Errorf("child process has failed to %s: exit status %d", action, res.exitCode)
	}
	return nil
}

// cappedBuffer keeps the first limit bytes written to it and drops the rest,
// so a chatty helper cannot make the plugin allocate without bound.
type cappedBuffer struct {
	buf   bytes.Buffer
	limit int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if room := b.limit - b.buf.Len(); room > 0 {
		if len(p) <= room {
			b.buf.Write(p)
		} else {
			b.buf.Write(p[:room])
		}
	}
	return len(p), nil
}

func (b *cappedBuffer) Bytes() []byte { return b.buf.Bytes() }

// strerror renders an errno as glibc's strerror() does: qemu-ga's messages
// embed it, and Go's own texts are lower-case.
func strerror(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		msg := errno.Error()
		if msg == "" {
			return fmt.Sprintf("Unknown error %d", int(errno))
		}
		return strings.ToUpper(msg[:1]) + msg[1:]
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return strerror(pe.Err)
	}
	return err.Error()
}

// errnoOf extracts the errno of err, 0 when there is none.
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return 0
}

// readFileLimited reads a whole file, refusing one larger than the
// configured limit.
func (s *system) readFileLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, s.opts.MaxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > s.opts.MaxFileBytes {
		return nil, &fs.PathError{Op: "read", Path: path, Err: unix.EFBIG}
	}
	return data, nil
}

package supervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"github.com/hashicorp/go-plugin/runner"
	"golang.org/x/sys/unix"
)

// processRunner starts a plugin binary for go-plugin. go-plugin's own runner
// does the same, but only a runner of ours makes go-plugin keep a plugin's
// sockets in a directory of its own under the runtime directory, which its
// Kill removes; with its default runner the supervisor's broker sockets go
// to /tmp and a crashed plugin's stay behind.
type processRunner struct {
	cmd    *exec.Cmd
	name   string
	stdout io.ReadCloser
	stderr io.ReadCloser
	pid    int

	// reaped is closed once go-plugin has waited for the process.
	reaped chan struct{}

	mu      sync.Mutex
	waited  bool
	waitErr error
}

// newProcessRunner builds the command for spec from the one go-plugin
// prepared (its environment: handshake cookie, certificate, socket
// directory), with the supervisor's process attributes.
func newProcessRunner(spec launchSpec, prepared *exec.Cmd, extraEnv []string) (*processRunner, error) {
	if spec.checksum != "" {
		if err := verifyChecksum(spec.path, spec.checksum); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(spec.path)
	cmd.Env = append(prepared.Env, extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		// Own process group: a terminal's Ctrl-C reaches the supervisor
		// only, which then stops plugins in order.
		Setpgid: true,
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	return &processRunner{cmd: cmd, name: spec.name, stdout: stdout, stderr: stderr, reaped: make(chan struct{})}, nil
}

// verifyChecksum refuses a binary whose SHA-256 is not the pinned one.
func verifyChecksum(path, want string) error {
	sum, err := hex.DecodeString(want)
	if err != nil || len(sum) != sha256.Size {
		return fmt.Errorf("checksum %q is not hex SHA-256", want)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("verify checksum: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("verify checksum: %w", err)
	}
	if got := h.Sum(nil); string(got) != string(sum) {
		return fmt.Errorf("checksum mismatch: %s has SHA-256 %x, pinned %s", path, got, want)
	}
	return nil
}

var _ runner.Runner = (*processRunner)(nil)

func (r *processRunner) Start(context.Context) error {
	if err := r.cmd.Start(); err != nil {
		return err
	}
	r.pid = r.cmd.Process.Pid
	return nil
}

func (r *processRunner) Wait(context.Context) error {
	err := r.cmd.Wait()
	r.mu.Lock()
	r.waited, r.waitErr = true, err
	r.mu.Unlock()
	close(r.reaped)
	return err
}

// exitStatus says how the process ended, once go-plugin has waited for it
// (after its client's Kill returned): "exit status 2", "killed by SIGKILL".
func (r *processRunner) exitStatus() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.waited {
		return "not reaped yet"
	}
	var ee *exec.ExitError
	switch {
	case r.waitErr == nil:
		return "exit status 0"
	case errors.As(r.waitErr, &ee):
		ws, ok := ee.Sys().(syscall.WaitStatus)
		if !ok || !ws.Signaled() {
			return ee.Error()
		}
		reason := "killed by " + unix.SignalName(ws.Signal())
		if ws.CoreDump() {
			reason += " (core dumped)"
		}
		return reason
	}
	return r.waitErr.Error()
}

func (r *processRunner) Kill(context.Context) error {
	if r.cmd.Process == nil {
		return nil
	}
	if err := r.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

func (r *processRunner) Stdout() io.ReadCloser { return r.stdout }
func (r *processRunner) Stderr() io.ReadCloser { return r.stderr }

// Name is the plugin's name: go-plugin names the logger of the plugin's
// forwarded records after it (guest-agent.cmd-exec).
func (r *processRunner) Name() string { return r.name }
func (r *processRunner) ID() string   { return strconv.Itoa(r.pid) }

func (r *processRunner) Diagnose(context.Context) string {
	return "the plugin did not answer go-plugin's handshake: is it a guest-agent plugin built for this machine?"
}

// Plugin and supervisor share one filesystem view.
func (r *processRunner) PluginToHost(n, a string) (string, string, error) { return n, a, nil }
func (r *processRunner) HostToPlugin(n, a string) (string, string, error) { return n, a, nil }

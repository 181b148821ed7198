// Package guestctl runs the built guestctl against the built guest-agent
// and Debian's qemu-ga in the same run: every command against both.
package guestctl

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// timeout bounds one guestctl run that should finish at once.
const timeout = 60 * time.Second

// target is one agent guestctl talks to.
type target struct {
	name   string // "guest-agent" or "qemu-ga"
	socket string
}

// bothAgents starts this agent and qemu-ga, each on its own unix socket.
func bothAgents(t *testing.T, opts harness.Options) []target {
	t.Helper()
	a := harness.StartAgent(t, opts)
	return []target{{"guest-agent", a.Socket}, {"qemu-ga", harness.StartQemuGA(t)}}
}

// forBoth runs f as a subtest against each agent.
func forBoth(t *testing.T, opts harness.Options, f func(t *testing.T, tg target)) {
	for _, tg := range bothAgents(t, opts) {
		t.Run(tg.name, func(t *testing.T) { f(t, tg) })
	}
}

// result is what one guestctl run left.
type result struct {
	stdout, stderr string
	code           int
}

// guestctl runs the built guestctl with args and waits for it, at most within.
func guestctl(t *testing.T, within time.Duration, stdin []byte, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(harness.BinDir(t), "guestctl"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("guestctl %q did not finish within %s\nstdout: %s\nstderr: %s", args, within, stdout.String(), stderr.String())
	}
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("guestctl %q: %v", args, err)
	}
	return r
}

// mustRun runs guestctl and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := guestctl(t, timeout, nil, args...)
	if r.code != 0 {
		t.Fatalf("guestctl %q: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

func TestMain(m *testing.M) { os.Exit(m.Run()) }

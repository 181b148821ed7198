// Package oxenstored runs a real xenstored, Debian's oxenstored, for
// integration tests, without a hypervisor.
//
// oxenstored normally refuses to start outside dom0: it opens the Xen
// control and event-channel interfaces and raises RLIMIT_NOFILE. The
// harness builds, with gcc, a small LD_PRELOAD library (csrc/xenstub.c) that
// stubs those calls, and runs the daemon with --no-fork --no-domain-init and
// a minimal configuration (no persistence, no ring scanning, logs in a
// temporary directory). Its socket path /var/run/xenstored/socket is
// compiled in, so the daemon runs in a private mount namespace (unshare -m)
// with a tmpfs on /var/run and, on /var/run/xenstored, a bind mount of a
// directory of the test's: the socket appears there, reachable by the test
// process and by xenstore-utils through XENSTORED_PATH.
//
// Needs root (for the mount namespace), gcc, util-linux, and the Debian
// packages xen-utils-4.17 (the daemon) and xenstore-utils (the CLI tools).
package oxenstored

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DefaultBinary is where Debian's xen-utils-4.17 installs oxenstored. The
// OXENSTORED environment variable overrides it; other versions under
// /usr/lib/xen-*/bin are tried when it is missing.
const DefaultBinary = "/usr/lib/xen-4.17/bin/oxenstored"

//go:embed csrc/xenstub.c
var stubSource []byte

const startTimeout = 10 * time.Second

// config is the minimal oxenstored.conf; the rest are built-in defaults.
// ring-scan-interval = -1 turns off the periodic scan of domain rings,
// which there are none of.
const config = `# written by the guest-agent test harness
persistent = false
ring-scan-interval = -1
pid-file = %[1]s/xenstored.pid
xenstored-log-file = %[1]s/xenstored.log
xenstored-log-level = info
access-log-file = %[1]s/access.log
`

// script runs inside the new mount namespace; unshare makes its mounts
// private, so nothing here is visible outside.
const script = `set -e
mount -t tmpfs -o mode=0755,size=16m xenstored-test /var/run
mkdir -p /var/run/xenstored
mount --bind "$1" /var/run/xenstored
LD_PRELOAD="$2" exec "$3" --no-fork --no-domain-init --config-file "$4"
`

// Daemon is a running oxenstored.
type Daemon struct {
	bin     string
	dir     string // config, stub library, logs
	sockDir string
	path    string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// Binary returns the oxenstored to use, or "" if none is installed.
func Binary() string {
	if p := os.Getenv("OXENSTORED"); p != "" {
		return p
	}
	if _, err := os.Stat(DefaultBinary); err == nil {
		return DefaultBinary
	}
	matches, _ := filepath.Glob("/usr/lib/xen-*/bin/oxenstored")
	if len(matches) == 0 {
		return ""
	}
	return matches[len(matches)-1]
}

// Start runs a fresh, empty oxenstored for the test and stops it when the
// test ends. It skips the test when oxenstored is not installed; any other
// problem (not root, no gcc, the daemon dying) fails it.
func Start(tb testing.TB) *Daemon {
	tb.Helper()
	bin := Binary()
	if bin == "" {
		tb.Skip("oxenstored not installed: apt-get install xen-utils-4.17 xenstore-utils")
	}
	if _, err := os.Stat(bin); err != nil {
		tb.Fatalf("oxenstored: %v", err)
	}
	for _, tool := range []string{"gcc", "unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Fatalf("oxenstored harness needs %s: %v", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		tb.Fatalf("oxenstored harness needs root for its mount namespace (euid %d)", os.Geteuid())
	}

	// Not tb.TempDir: the socket path must fit in sun_path's 108 bytes.
	dir, err := os.MkdirTemp("", "oxs")
	if err != nil {
		tb.Fatalf("oxenstored: %v", err)
	}
	d := &Daemon{
		bin:     bin,
		dir:     dir,
		sockDir: filepath.Join(dir, "sock"),
	}
	d.path = filepath.Join(d.sockDir, "socket")
	tb.Cleanup(func() {
		d.Stop()
		if tb.Failed() {
			tb.Logf("oxenstored output:\n%s", d.Logs())
		}
		_ = os.RemoveAll(dir)
	})
	if err := d.prepare(); err != nil {
		tb.Fatalf("oxenstored: %v", err)
	}
	if err := d.start(); err != nil {
		tb.Fatalf("oxenstored: %v\n%s", err, d.Logs())
	}
	return d
}

// Path returns the socket path, for xenstore.Dial or XENSTORED_PATH.
func (d *Daemon) Path() string { return d.path }

// Pid returns the daemon's process id, or 0 when it is not running.
func (d *Daemon) Pid() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	select {
	case <-d.exited:
		return 0
	default:
		return d.cmd.Process.Pid
	}
}

func (d *Daemon) prepare() error {
	if err := os.Mkdir(d.sockDir, 0o700); err != nil {
		return err
	}
	src := filepath.Join(d.dir, "xenstub.c")
	if err := os.WriteFile(src, stubSource, 0o600); err != nil {
		return err
	}
	so := filepath.Join(d.dir, "xenstub.so")
	out, err := exec.Command("gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", so, src, "-ldl").CombinedOutput()
	if err != nil {
		return fmt.Errorf("building the LD_PRELOAD stub: %w\n%s", err, out)
	}
	conf := fmt.Sprintf(config, d.dir)
	return os.WriteFile(filepath.Join(d.dir, "oxenstored.conf"), []byte(conf), 0o600)
}

func (d *Daemon) start() error {
	// A socket left by a previous run would make readiness look immediate.
	_ = os.Remove(d.path)
	out, err := os.OpenFile(filepath.Join(d.dir, "output.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command("unshare", "--mount", "--propagation", "private",
		"sh", "-c", script, "sh",
		d.sockDir, filepath.Join(d.dir, "xenstub.so"), d.bin, filepath.Join(d.dir, "oxenstored.conf"))
	cmd.Stdout, cmd.Stderr = out, out
	// unshare and sh exec into oxenstored, so this is the daemon's own
	// process: it dies with the test binary even if Stop never runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting unshare: %w", err)
	}
	d.cmd = cmd
	d.exited = make(chan struct{})
	go func() {
		d.waitErr = cmd.Wait()
		close(d.exited)
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("unix", d.path, time.Second)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("exited during start-up: %v", d.waitErr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.Stop()
			return fmt.Errorf("socket %s not ready after %v: %w", d.path, startTimeout, err)
		}
	}
}

// Stop terminates the daemon (SIGTERM, then SIGKILL after 2s) and waits
// for it. Its mount namespace, and the tree, go with it.
func (d *Daemon) Stop() {
	if d.cmd == nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	// Negative pid: the whole process group, in case sh has not exec'ed yet.
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(2 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	}
}

// Restart stops the daemon and starts a new, empty one on the same socket
// path, as a host whose xenstored restarts would.
func (d *Daemon) Restart(tb testing.TB) {
	tb.Helper()
	d.Stop()
	if err := d.start(); err != nil {
		tb.Fatalf("oxenstored restart: %v\n%s", err, d.Logs())
	}
}

// Logs returns the daemon's output and its log file, for diagnostics.
func (d *Daemon) Logs() string {
	var b strings.Builder
	for _, f := range []string{"output.log", "xenstored.log"} {
		data, err := os.ReadFile(filepath.Join(d.dir, f))
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "--- %s\n%s", f, data)
	}
	return b.String()
}

// Env returns the environment for a xenstore-utils tool to reach this
// daemon: the current one with XENSTORED_PATH set.
func (d *Daemon) Env() []string {
	env := make([]string, 0, len(os.Environ())+1)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "XENSTORED_PATH=") {
			env = append(env, e)
		}
	}
	return append(env, "XENSTORED_PATH="+d.path)
}

// Command prepares a xenstore-utils tool (xenstore-read, xenstore-write,
// xenstore-ls, xenstore-rm, xenstore-list, xenstore-watch, ...) to run
// against this daemon. Pass -s to keep libxenstore from falling back to a
// xenbus device.
func (d *Daemon) Command(ctx context.Context, tool string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = d.Env()
	return cmd
}

// run executes a tool and returns its standard output; a failure carries
// its standard error.
func (d *Daemon) run(ctx context.Context, tool string, args ...string) (string, error) {
	cmd := d.Command(ctx, tool, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return stdout.String(), fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return stdout.String(), fmt.Errorf("%s: %w", tool, err)
	}
	return stdout.String(), nil
}

// XenstoreWrite runs xenstore-write with path/value pairs. Values are
// written raw (-R): backslashes are not interpreted as escapes.
func (d *Daemon) XenstoreWrite(ctx context.Context, pathValue ...string) error {
	if len(pathValue) == 0 || len(pathValue)%2 != 0 {
		return fmt.Errorf("xenstore-write: want path/value pairs, got %d arguments", len(pathValue))
	}
	_, err := d.run(ctx, "xenstore-write", append([]string{"-s", "-R"}, pathValue...)...)
	return err
}

// XenstoreRead runs xenstore-read -R and returns the value without the
// newline the tool adds.
func (d *Daemon) XenstoreRead(ctx context.Context, path string) (string, error) {
	out, err := d.run(ctx, "xenstore-read", "-s", "-R", path)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(out, "\n"), nil
}

// XenstoreRm runs xenstore-rm on the paths.
func (d *Daemon) XenstoreRm(ctx context.Context, paths ...string) error {
	_, err := d.run(ctx, "xenstore-rm", append([]string{"-s"}, paths...)...)
	return err
}

// XenstoreLs runs xenstore-ls -f (full paths, one "path = "value"" a line).
func (d *Daemon) XenstoreLs(ctx context.Context, path string) (string, error) {
	return d.run(ctx, "xenstore-ls", "-s", "-f", path)
}

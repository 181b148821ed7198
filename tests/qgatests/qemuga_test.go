package qgatests

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// startQemuGA starts Debian's qemu-ga on a unix socket, as
// harness.StartQemuGA does, but bounds its stop: qemu-ga 7.2's SIGTERM
// handler calls g_main_loop_quit, which is not async-signal-safe, and a
// signal that lands while the main loop holds its context lock leaves the
// process blocked on that lock for good (seen here: a test binary waited
// out its 10-minute timeout). A SIGTERM not obeyed within 3 s is followed
// by SIGKILL. The log goes to a file, so waiting never depends on pipes
// that exec'd children inherited.
func startQemuGA(t testing.TB, extra ...string) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-ga")
	if err != nil {
		bin = "/usr/sbin/qemu-ga"
	}
	dir := harness.ShortTempDir(t)
	sock := filepath.Join(dir, "ref.sock")
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "qemu-ga.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(bin, append([]string{"-m", "unix-listen", "-p", sock, "-t", state}, extra...)...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu-ga (Debian package qemu-guest-agent): %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			t.Logf("qemu-ga ignored SIGTERM for 3 s: SIGKILL")
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("qemu-ga log:\n%s", b)
		}
	})
	harness.WaitForPing(t, sock, 10*time.Second)
	return sock
}

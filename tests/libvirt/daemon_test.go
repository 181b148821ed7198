package libvirt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// libvirtDirs are the directories libvirtd works in; each is replaced, in
// the daemon's private mount namespace, by a directory of the test.
var libvirtDirs = []struct{ name, path string }{
	{"etc", "/etc/libvirt"},
	{"run", "/run/libvirt"},
	{"lib", "/var/lib/libvirt"},
	{"log", "/var/log/libvirt"},
	{"cache", "/var/cache/libvirt"},
}

// qemuConf runs QEMU as root without cgroups, security drivers or private
// /dev (nothing to create or undo on the machine), and QEMU's output to a
// plain file rather than through virtlogd, which is not started here.
const qemuConf = `user = "root"
group = "root"
stdio_handler = "file"
cgroup_controllers = [ ]
security_driver = "none"
namespaces = [ ]
`

// libvirtdConf: root alone reaches the sockets, and the log has libvirt's
// agent I/O (every command sent and line read: qemu_agent at debug level)
// besides errors and warnings.
const libvirtdConf = `unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_filters = "1:qemu.qemu_agent 3:*"
log_outputs = "1:stderr"
`

// namespaceInit runs as PID 1 of the daemon's PID namespace: it mounts the
// test's directories over libvirt's, gives the namespace a passwd and
// group file that know libvirt-qemu (Debian's libvirtd looks that user up
// before it reads qemu.conf), and runs libvirtd. bash as PID 1 reaps the
// QEMU processes libvirtd daemonizes. When this process dies the kernel
// kills every process of the namespace: no QEMU outlives the test.
const namespaceInit = `set -e
d=$1
mount --bind "$d/etc" /etc/libvirt
mount --bind "$d/run" /run/libvirt
mount --bind "$d/lib" /var/lib/libvirt
mount --bind "$d/log" /var/log/libvirt
mount --bind "$d/cache" /var/cache/libvirt
mount --bind "$d/passwd" /etc/passwd
mount --bind "$d/group" /etc/group
/usr/sbin/libvirtd --pid-file /run/libvirt/libvirtd.pid &
wait $!
`

// daemon is a libvirtd of the test's own, reached through its socket.
type daemon struct {
	dir string // etc/ run/ lib/ log/ cache/ as libvirtd sees them
	uri string
	cmd *exec.Cmd
	log string
}

// startDaemon starts Debian's libvirtd in private mount and PID
// namespaces over the test's own directories and waits until virsh reaches
// it. Nothing on the machine is written but empty mount points that did
// not exist (removed again), and everything is gone when the test ends:
// the namespace's processes die with it, also when the test binary itself
// is killed (unshare gets SIGKILL on its parent's death and passes it to
// the namespace's init).
func startDaemon(t *testing.T, ctx context.Context) *daemon {
	for _, p := range []string{"/usr/sbin/libvirtd", "/usr/bin/virsh"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients", p)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("the libvirt test runs libvirtd in its own namespaces: it needs root")
	}
	d := &daemon{dir: harness.ShortTempDir(t)}
	d.uri = "qemu:///system?socket=" + filepath.Join(d.dir, "run", "libvirt-sock")
	d.log = filepath.Join(d.dir, "libvirtd.log")
	for _, l := range libvirtDirs {
		if err := os.MkdirAll(filepath.Join(d.dir, l.name), 0o755); err != nil {
			t.Fatal(err)
		}
		// The mount point itself must exist; one made here goes again.
		if _, err := os.Stat(l.path); errors.Is(err, os.ErrNotExist) {
			if err := os.Mkdir(l.path, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Remove(l.path) })
		}
	}
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(d.dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/qemu.conf", qemuConf)
	write("etc/libvirtd.conf", libvirtdConf)
	for _, f := range []struct{ name, line string }{
		{"passwd", "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"},
		{"group", "libvirt-qemu:x:64055:\n"},
	} {
		b, err := os.ReadFile("/etc/" + f.name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "\nlibvirt-qemu:") && !strings.HasPrefix(string(b), "libvirt-qemu:") {
			b = append(b, f.line...)
		}
		write(f.name, string(b))
	}
	write("init.sh", namespaceInit)

	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "--pid", "--fork",
		"--kill-child=SIGKILL", "--mount-proc", "bash", filepath.Join(d.dir, "init.sh"), d.dir)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("unshare (util-linux): %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("unshare did not exit within 10 s of SIGKILL")
		}
		// The namespace died with its init; make sure of it.
		if pids := qemuProcesses(); len(pids) > 0 {
			t.Errorf("QEMU processes of the test outlived libvirtd: %v", pids)
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		keepLog(t, "libvirtd.log", readFile(d.log))
		if t.Failed() {
			t.Logf("libvirtd's errors and warnings (tail):\n%s", tail(daemonProblems(readFile(d.log)), 30))
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _, err := d.virsh(ctx, 10*time.Second, "version", "--daemon")
		if err == nil {
			t.Logf("libvirtd up: %s", strings.Join(strings.Fields(out), " "))
			return d
		}
		select {
		case <-exited:
			t.Fatalf("libvirtd exited:\n%s", readFile(d.log))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd did not answer within 60 s: %v %s\n%s", err, out, readFile(d.log))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// daemonProblems are the error and warning lines of libvirtd's log, but
// the "not connected" of every poll before an agent starts.
func daemonProblems(log string) string {
	var b strings.Builder
	for _, line := range strings.Split(log, "\n") {
		if (strings.Contains(line, ": error : ") || strings.Contains(line, ": warning : ")) &&
			!strings.Contains(line, "QEMU guest agent is not connected") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// errTimeout marks a virsh call that had no answer within its deadline.
var errTimeout = errors.New("no answer")

// virsh runs one virsh command against the daemon, killed at timeout.
func (d *daemon) virsh(ctx context.Context, timeout time.Duration, args ...string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-c", d.uri}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	b, err := cmd.CombinedOutput()
	took := time.Since(start)
	out := strings.TrimSpace(string(b))
	if ctx.Err() != nil {
		return out, took, fmt.Errorf("virsh %s: %w within %s", args[0], errTimeout, took.Round(time.Second))
	}
	if err != nil {
		return out, took, fmt.Errorf("virsh %s: %v: %s", args[0], err, out)
	}
	return out, took, nil
}

// qemuProcesses lists the QEMU processes of this test's domains.
func qemuProcesses() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(b), "guest="+domainPrefix) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// keepLog copies a log into $GUEST_AGENT_LIBVIRT_LOGS, when set.
func keepLog(t *testing.T, name, content string) {
	dir := os.Getenv("GUEST_AGENT_LIBVIRT_LOGS")
	if dir == "" {
		return
	}
	err := os.MkdirAll(dir, 0o755)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
	}
	if err != nil {
		t.Logf("keeping %s: %v", name, err)
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package debianguest

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/guestimage"
	"github.com/guest-agent/guest-agent/tests/harness"
)

// PortID is the qdev id of the guest agent's virtserialport (QMP
// device_del and device_add use it).
const PortID = "qgaport"

// VM is one boot of the Debian guest under qemu-system-x86_64 (TCG).
type VM struct {
	Name    string
	Started time.Time
	// QGA is the host side of org.qemu.guest_agent.0, QMP QEMU's monitor.
	QGA, QMP string
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	console  *Console
	stderr   *harness.SyncBuffer
	exited   chan struct{}
	exitErr  error
	shellSeq int
}

// Console is the guest's serial console (ttyS0) as the host read it,
// carriage returns dropped.
type Console struct {
	mu sync.Mutex
	b  strings.Builder
}

func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.b.WriteString(strings.ReplaceAll(string(p), "\r", ""))
	return len(p), nil
}

// String is everything so far.
func (c *Console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// Len is how much has been read so far.
func (c *Console) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.Len()
}

// Boot starts QEMU on the root image with the debs image as a second,
// read-only disk and the agent's port present (or not: withPort false).
func Boot(t *testing.T, name, rootImg, debsImg string, withPort bool) *VM {
	t.Helper()
	kver := guestimage.KernelVersion(t)
	initrd := "/boot/initrd.img-" + kver
	if _, err := os.Stat(initrd); err != nil {
		t.Fatalf("no initrd for %s: %v", kver, err)
	}
	dir := harness.ShortTempDir(t)
	vm := &VM{Name: name, QGA: filepath.Join(dir, "qga.sock"), QMP: filepath.Join(dir, "qmp.sock"),
		console: &Console{}, stderr: &harness.SyncBuffer{}, exited: make(chan struct{})}
	args := []string{
		"-accel", "tcg", "-m", "1024", "-smp", "1",
		"-display", "none", "-no-reboot", "-nodefaults", "-no-user-config",
		"-kernel", guestimage.Kernel(kver), "-initrd", initrd,
		// fsck.mode=skip: the image is clean, each boot ends in a clean
		// power-off (checked), and fsck of 1 GB costs seconds under TCG.
		"-append", "root=/dev/vda rw console=ttyS0 quiet loglevel=3 panic=-1 fsck.mode=skip",
		// cache=unsafe: the guest's flushes (dpkg syncs every file it
		// unpacks) stop at QEMU; the image is thrown away after the test.
		"-drive", "file=" + rootImg + ",if=virtio,format=raw,cache=unsafe",
		"-drive", "file=" + debsImg + ",if=virtio,format=raw,readonly=on",
		"-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0",
		"-chardev", "socket,path=" + vm.QGA + ",server=on,wait=off,id=qga0",
		"-device", "virtio-serial-pci,id=vser0",
		"-qmp", "unix:" + vm.QMP + ",server=on,wait=off",
	}
	if withPort {
		args = append(args, "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0,id="+PortID)
	}
	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	var err error
	if vm.stdin, err = vm.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	vm.cmd.Stdout, vm.cmd.Stderr = vm.console, vm.stderr
	// QEMU dies with the test binary, also when go test's -timeout ends
	// it without cleanups.
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	vm.Started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu (install qemu-system-x86): %v", err)
	}
	go func() { vm.exitErr = vm.cmd.Wait(); close(vm.exited) }()
	// ...and before that timeout, so that the test fails with the console
	// in its log instead.
	if deadline, ok := t.Deadline(); ok {
		watchdog := time.AfterFunc(time.Until(deadline)-30*time.Second, func() {
			fmt.Fprintf(vm.stderr, "test: qemu killed 30 s before the test's deadline\n")
			vm.Kill()
		})
		t.Cleanup(func() { watchdog.Stop() })
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() || os.Getenv("GUEST_AGENT_DEBIAN_GUEST_CONSOLE") != "" {
			t.Logf("serial console of %s:\n%s", vm.Name, vm.console.String())
			if s := vm.stderr.String(); s != "" {
				t.Logf("qemu stderr of %s:\n%s", vm.Name, s)
			}
		}
	})
	return vm
}

// Kill ends QEMU if it still runs.
func (vm *VM) Kill() {
	select {
	case <-vm.exited:
	default:
		_ = vm.cmd.Process.Kill()
		<-vm.exited
	}
}

// Exited reports whether QEMU has exited.
func (vm *VM) Exited() bool {
	select {
	case <-vm.exited:
		return true
	default:
		return false
	}
}

// WaitExit waits until QEMU exits and returns its exit error.
func (vm *VM) WaitExit(within time.Duration) (bool, error) {
	select {
	case <-vm.exited:
		return true, vm.exitErr
	case <-time.After(within):
		return false, nil
	}
}

// Console is the serial console so far.
func (vm *VM) Console() string { return vm.console.String() }

// WaitShell waits until the root shell on the serial console runs
// commands: a marker command is sent every 2 s (agetty flushes what came
// before it) until its output comes back.
func (vm *VM) WaitShell(t testing.TB, within time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(within)
	for i := 0; ; i++ {
		if vm.Exited() {
			t.Fatalf("%s: qemu exited before the shell came up: %v", vm.Name, vm.exitErr)
		}
		re := regexp.MustCompile(fmt.Sprintf(`@@R%d@@`, i))
		from := vm.console.Len()
		fmt.Fprintf(vm.stdin, "printf '@@R%%s@@\\n' %d\n", i)
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if re.MatchString(vm.console.String()[from:]) {
				// A plain shell: no echo of what the host types.
				vm.MustSh(t, "stty -echo cols 1000 rows 50 </dev/tty", 10*time.Second)
				return time.Since(vm.Started)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no root shell on the serial console within %s", vm.Name, within)
		}
	}
}

// Sh runs a shell script on the guest's serial console and returns its
// output (stdout and stderr) and exit status; the test fails when it does
// not end within limit.
func (vm *VM) Sh(t testing.TB, script string, limit time.Duration) (string, int) {
	t.Helper()
	out, code, err := vm.TrySh(script, limit)
	if err != nil {
		t.Fatalf("%s: %v", vm.Name, err)
	}
	return out, code
}

// MustSh is Sh that fails the test on a non-zero exit status.
func (vm *VM) MustSh(t testing.TB, script string, limit time.Duration) string {
	t.Helper()
	out, code := vm.Sh(t, script, limit)
	if code != 0 {
		t.Fatalf("%s: %q exited with %d:\n%s", vm.Name, script, code, out)
	}
	return out
}

// TrySh is Sh returning an error instead of failing.
func (vm *VM) TrySh(script string, limit time.Duration) (string, int, error) {
	vm.shellSeq++
	n := vm.shellSeq
	// The markers are assembled by printf: the typed text never matches.
	line := fmt.Sprintf("printf '\\n@@B%%s@@\\n' %d; { %s\n} </dev/null 2>&1; printf '\\n@@E%%s:%%s@@\\n' %d $?\n", n, script, n)
	re := regexp.MustCompile(fmt.Sprintf(`(?s)@@B%d@@\n(.*?)\n?@@E%d:(\d+)@@`, n, n))
	from := vm.console.Len()
	if _, err := io.WriteString(vm.stdin, line); err != nil {
		return "", -1, fmt.Errorf("write to the serial console: %v", err)
	}
	deadline := time.Now().Add(limit)
	for {
		if m := re.FindStringSubmatch(vm.console.String()[from:]); m != nil {
			code, _ := strconv.Atoi(m[2])
			return m[1], code, nil
		}
		if vm.Exited() {
			return "", -1, fmt.Errorf("qemu exited while running %q", script)
		}
		if time.Now().After(deadline) {
			return "", -1, fmt.Errorf("%q did not end within %s on the serial console", script, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Reply is one QGA reply.
type Reply = harness.Reply

// Call sends one QGA request to the agent, after a guest-sync-delimited
// handshake with a 0xFF (as libvirt does, so nothing left in the port by an
// earlier host is taken for the answer), on a connection of its own, and
// returns the reply. A command without a success response (guest-shutdown)
// gets none: noReply.
func (vm *VM) Call(execute string, args any, limit time.Duration, noReply bool) (Reply, error) {
	c, err := harness.Dial(vm.QGA)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(limit)); err != nil {
		return Reply{}, err
	}
	id := rand.Int64N(1 << 40)
	if _, err := fmt.Fprintf(c, "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id); err != nil {
		return Reply{}, err
	}
	for {
		line, err := c.R.ReadString('\n')
		if err != nil {
			return Reply{}, fmt.Errorf("sync: %v", err)
		}
		line = strings.TrimPrefix(line, "\xff")
		var r Reply
		if json.Unmarshal([]byte(line), &r) == nil && string(r.Return) == strconv.FormatInt(id, 10) {
			break
		}
	}
	req := map[string]any{"execute": execute}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return Reply{}, err
	}
	if noReply {
		return Reply{}, nil
	}
	line, err := c.R.ReadString('\n')
	if err != nil {
		return Reply{}, fmt.Errorf("%s: %v", execute, err)
	}
	var r Reply
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return Reply{}, fmt.Errorf("%s: reply %q: %v", execute, line, err)
	}
	if r.Error != nil {
		return r, fmt.Errorf("%s: %s: %s", execute, r.Error.Class, r.Error.Desc)
	}
	return r, nil
}

// WaitAgent waits until the agent answers guest-ping (each try bounded by
// 3 s) and returns when it did.
func (vm *VM) WaitAgent(within time.Duration) (time.Time, error) {
	deadline := time.Now().Add(within)
	var err error
	for time.Now().Before(deadline) {
		if vm.Exited() {
			return time.Time{}, fmt.Errorf("qemu exited")
		}
		if _, err = vm.Call("guest-ping", nil, 3*time.Second, false); err == nil {
			return time.Now(), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("no answer to guest-ping within %s: %v", within, err)
}

// Info is guest-info's result.
type Info struct {
	Version  string `json:"version"`
	Commands []struct {
		Name    string `json:"name"`
		Enabled bool   `json:"enabled"`
	} `json:"supported_commands"`
}

// Has reports whether guest-info lists the command.
func (i Info) Has(name string) bool {
	for _, c := range i.Commands {
		if c.Name == name {
			return true
		}
	}
	return false
}

// GuestInfo asks guest-info.
func (vm *VM) GuestInfo(limit time.Duration) (Info, error) {
	r, err := vm.Call("guest-info", nil, limit, false)
	if err != nil {
		return Info{}, err
	}
	var info Info
	err = json.Unmarshal(r.Return, &info)
	return info, err
}

// QMPCommand runs one QMP command on a connection of its own.
func (vm *VM) QMPCommand(execute string, args any) (json.RawMessage, error) {
	return harness.QMP(vm.QMP, execute, args)
}

package vm

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/guestimage"
	"github.com/guest-agent/guest-agent/tests/harness"
)

// negotiatorInit starts the agent on negotiator's host-to-guest port (its
// commands from /ga/cmds) holding the guest-to-host port for the guest's
// programs, then calls the host the way a guest program does: directly
// on the port, then through the agent, two at once. Results go to the
// console, one NEGO line each.
const negotiatorInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /tmp /run/ga
for m in /lib/modules/*.ko; do insmod "$m" || echo "insmod $m failed"; done
i=0
while [ "$(cat /sys/class/virtio-ports/*/name 2>/dev/null | wc -l)" -lt 2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "guest-agent-vm: ports $(cat /sys/class/virtio-ports/*/name 2>/dev/null | tr '\n' ' ')"
/ga/guest-agent -m virtio-serial -p negotiator-host-to-guest.0 --dialect negotiator -t /run/ga --runtime-dir /run/ga/rt -c /ga/negotiator.hcl -v &
# The host's daemon connects within its rescan: call until it answers.
i=0
until /ga/guest-agent host --relay "" --timeout 3s exec whoami >/tmp/who 2>&1 || [ $i -ge 60 ]; do sleep 1; i=$((i+1)); done
echo "NEGO whoami: $(cat /tmp/who)"
echo "NEGO upper: $(echo 'from the guest' | /ga/guest-agent host --relay '' exec --stdin upper)"
/ga/guest-agent host --relay "" exec fails >/tmp/fails 2>&1
echo "NEGO fails: status $? $(cat /tmp/fails)"
echo "NEGO list: $(/ga/guest-agent host --relay '' list-commands | tr '\n' ' ')"
/ga/guest-agent host --relay /run/ga/host.sock exec pause one >/tmp/r1 2>&1 &
/ga/guest-agent host --relay /run/ga/host.sock exec pause two >/tmp/r2 2>&1 &
wait %2 %3
echo "NEGO relay: $(cat /tmp/r1) $(cat /tmp/r2)"
echo "NEGO done"
wait
poweroff -f
`

const negotiatorConfig = `
negotiator_host {
  enabled = true
  socket  = "/run/ga/host.sock"
}
plugin "cmd-exec" {
  options = { commands_dir = "/ga/cmds" }
}
`

// TestVMNegotiator: negotiator over real virtio-serial ports. The host
// calls the guest's agent (guestctl negotiator on negotiator-host-to-guest.0)
// and the guest's programs call the host (guest-agent host on
// negotiator-guest-to-host.0, answered by guestctl daemon pointed at the
// VM's socket).
func TestVMNegotiator(t *testing.T) {
	if os.Getenv("GUEST_AGENT_VM") == "" {
		t.Skip("VM test runs through `make vm-test` (GUEST_AGENT_VM=1)")
	}
	start := time.Now()
	bin := harness.BinDir(t)
	kver := guestimage.KernelVersion(t)
	im := guestimage.New(t)
	im.AddModules(kver, "virtio_pci", "virtio_console")
	im.AddAgent(bin, "/ga", "/ga")
	im.Write("/ga/negotiator.hcl", negotiatorConfig, 0o644)
	im.Write("/ga/cmds/hello", "#!/bin/sh\necho \"hello from the guest $*\"\n", 0o755)
	im.Write("/ga/cmds/lower", "#!/bin/sh\ntr A-Z a-z\n", 0o755)
	im.Write("/ga/cmds/slow", "#!/bin/sh\nsleep 2; echo slow\n", 0o755)
	im.Write("/ga/cmds/broken", "#!/bin/sh\necho 'guest side broke' >&2; exit 9\n", 0o755)
	im.Write("/etc/os-release", "NAME=\"Busybox Test Linux\"\nVERSION_ID=\"1.0\"\nVERSION_CODENAME=initramfs\n", 0o644)
	im.Write("/init", negotiatorInit, 0o755)
	initrd := im.Archive()

	dir := harness.ShortTempDir(t)
	h2g := filepath.Join(dir, "h2g.sock")
	guests := filepath.Join(dir, "guests")
	if err := os.MkdirAll(filepath.Join(guests, "vm1"), 0o755); err != nil {
		t.Fatal(err)
	}
	g2h := filepath.Join(guests, "vm1", "negotiator-guest-to-host.0")
	cmds := t.TempDir()
	for name, body := range map[string]string{
		"whoami": "#!/bin/sh\necho \"$NEGOTIATOR_GUEST\"\n",
		"upper":  "#!/bin/sh\ntr a-z A-Z\n",
		"fails":  "#!/bin/sh\necho 'host side broke' >&2; exit 5\n",
		"pause":  "#!/bin/sh\nsleep 0.5; echo \"$1\"\n",
	} {
		if err := os.WriteFile(filepath.Join(cmds, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	console := &harness.SyncBuffer{}
	qemu := exec.Command("qemu-system-x86_64",
		"-accel", "tcg", "-m", "512", "-smp", "1",
		"-nographic", "-no-reboot", "-nodefaults",
		"-kernel", guestimage.Kernel(kver), "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=3",
		"-serial", "stdio",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,path="+h2g+",server=on,wait=off,id=h2g",
		"-device", "virtserialport,chardev=h2g,name=negotiator-host-to-guest.0",
		"-chardev", "socket,path="+g2h+",server=on,wait=off,id=g2h",
		"-device", "virtserialport,chardev=g2h,name=negotiator-guest-to-host.0",
	)
	qemu.Stdout, qemu.Stderr = console, console
	if err := qemu.Start(); err != nil {
		t.Fatalf("start qemu (install qemu-system-x86): %v", err)
	}
	t.Cleanup(func() {
		_ = qemu.Process.Kill()
		_, _ = qemu.Process.Wait()
		if t.Failed() {
			t.Logf("VM console:\n%s", console.String())
		}
	})
	daemonLog := &harness.SyncBuffer{}
	daemon := exec.Command(filepath.Join(bin, "guestctl"), "--socket-dir", guests, "daemon", "--commands-dir", cmds, "--rescan", "1s", "-v")
	daemon.Stdout, daemon.Stderr = daemonLog, daemonLog
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = daemon.Process.Signal(os.Interrupt)
		_, _ = daemon.Process.Wait()
		if t.Failed() {
			t.Logf("guestctl daemon log:\n%s", daemonLog.String())
		}
	})

	negotiator := func(stdin string, args ...string) (string, string, error) {
		cmd := exec.Command(filepath.Join(bin, "guestctl"), append([]string{"--socket", h2g, "--timeout", "10s", "negotiator"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		return out.String(), errOut.String(), err
	}
	// The host calls the guest once the agent serves the port (its log is
	// on the console). Not by calling until it answers: negotiator has no
	// resynchronisation, and a request that timed out waiting would be
	// answered later, to whoever is connected then.
	for deadline := time.Now().Add(150 * time.Second); !strings.Contains(console.String(), "channel open: channel=negotiator"); time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the agent in the VM did not open its negotiator channel")
		}
	}
	out, errOut, err := negotiator("", "--timeout", "60s", "list-commands")
	if err != nil || !strings.Contains(out, "hello\n") || !strings.Contains(out, "find-ip-addresses\n") {
		t.Fatalf("list-commands over the VM's port: %v %q %q", err, out, errOut)
	}
	t.Logf("host-to-guest answered %s after boot start", time.Since(start).Round(time.Millisecond))
	if out, errOut, err = negotiator("", "exec", "hello", "über"); err != nil || out != "hello from the guest über\n" {
		t.Fatalf("exec hello: %v %q %q", err, out, errOut)
	}
	if out, errOut, err = negotiator("SHOUTING", "exec", "--stdin", "lower"); err != nil || out != "shouting\n" {
		t.Fatalf("exec --stdin lower: %v %q %q", err, out, errOut)
	}
	if _, errOut, err = negotiator("", "exec", "broken"); err == nil || !strings.Contains(errOut, "exit status 9: guest side broke") {
		t.Fatalf("exec broken: %v %q", err, errOut)
	}
	if out, errOut, err = negotiator("", "exec", "find-distributor-id"); err != nil || out != "Busybox\n" {
		t.Fatalf("built-in command: %v %q %q", err, out, errOut)
	}
	if out, errOut, err = negotiator("", "exec", "find-distribution-codename"); err != nil || out != "initramfs\n" {
		t.Fatalf("built-in command: %v %q %q", err, out, errOut)
	}

	// A host that leaves while its command runs: its reply is dropped,
	// not handed to the next host.
	c, err := net.Dial("unix", h2g)
	if err != nil {
		t.Fatal(err)
	}
	req := `{"method": "execute", "args": ["slow"], "kw": {}}`
	if _, err := fmt.Fprintf(c, "%d\n%s", len(req), req); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	c.Close()
	time.Sleep(3 * time.Second)
	if out, errOut, err = negotiator("", "exec", "hello"); err != nil || out != "hello from the guest\n" {
		t.Fatalf("after a host left mid-command: %v %q %q", err, out, errOut)
	}

	// The guest calls the host: its program's results on the console.
	for deadline := time.Now().Add(120 * time.Second); !strings.Contains(console.String(), "NEGO done"); time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			t.Fatal("the guest's calls to the host did not finish")
		}
	}
	lines := map[string]string{}
	for _, l := range strings.Split(console.String(), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "NEGO "); ok {
			k, v, _ := strings.Cut(rest, ": ")
			lines[k] = strings.TrimSpace(v)
		}
	}
	for k, want := range map[string]string{
		"whoami": "vm1",
		"upper":  "FROM THE GUEST",
		"fails":  "status 5 guest-agent host: command 'fails' failed: exit status 5: host side broke",
		"relay":  "one two",
	} {
		if lines[k] != want {
			t.Errorf("guest's %s: %q, want %q", k, lines[k], want)
		}
	}
	if !strings.Contains(lines["list"], "whoami") || !strings.Contains(lines["list"], "find-disk-usage") {
		t.Errorf("guest's list-commands: %q", lines["list"])
	}
	t.Logf("negotiator VM test done in %s", time.Since(start).Round(time.Millisecond))
}

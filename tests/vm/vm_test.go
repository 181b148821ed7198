// Package vm boots a real QEMU VM (TCG, Debian's kernel, a busybox
// initramfs built here with the static agent and plugins) and drives the
// agent inside it over a real virtio-serial port from the host.
package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/guestimage"
	"github.com/guest-agent/guest-agent/tests/harness"
)

// guestModules are what the VM's init loads (their dependencies come
// along): the virtio-serial port and the data disk of the fsfreeze check.
var guestModules = []string{"virtio_pci", "virtio_console", "virtio_blk", "ext4"}

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /tmp /run/ga
for m in /lib/modules/*.ko; do insmod "$m" || echo "insmod $m failed"; done
echo "guest-agent-vm: modules loaded"
i=0
while [ ! -e /sys/class/virtio-ports/vport0p1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "guest-agent-vm: port $(cat /sys/class/virtio-ports/*/name 2>/dev/null)"
i=0
while [ ! -e /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /mnt/data
mount -t ext4 /dev/vda /mnt/data && echo "guest-agent-vm: /mnt/data mounted" || echo "guest-agent-vm: mounting /dev/vda failed"
/ga/guest-agent -m virtio-serial -p org.qemu.guest_agent.0 -t /run/ga -c /ga/none.hcl -v
echo "guest-agent-vm: agent exited with $?"
poweroff -f
`

// buildInitramfs packs busybox, the modules, the agent and its plugins
// with their manifests (make build writes them: the agent knows every
// command at boot) and the init script.
func buildInitramfs(t *testing.T, kver, bin string) string {
	manifests, _ := filepath.Glob(filepath.Join(bin, "guest-agent-*.manifest"))
	if len(manifests) == 0 {
		t.Fatalf("no plugin manifests in %s: run make build", bin)
	}
	im := guestimage.New(t)
	im.AddModules(kver, guestModules...)
	im.AddAgent(bin, "/ga", "/ga")
	im.Write("/ga/none.hcl", "", 0o644)
	im.Write("/init", initScript, 0o755)
	return im.Archive()
}

type vmInstance struct {
	cmd     *exec.Cmd
	socket  string
	qmp     string // the QEMU monitor: the port is unplugged and plugged again
	console *harness.SyncBuffer
}

func bootVM(t *testing.T) *vmInstance {
	if os.Getenv("GUEST_AGENT_VM") == "" {
		t.Skip("VM test runs through `make vm-test` (GUEST_AGENT_VM=1)")
	}
	bin := harness.BinDir(t)
	kver := guestimage.KernelVersion(t)
	initrd := buildInitramfs(t, kver, bin)
	dir := harness.ShortTempDir(t)
	// The data disk: a small ext4 image, frozen and thawed by the test.
	disk := filepath.Join(t.TempDir(), "data.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "gadata", disk, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (install e2fsprogs): %v\n%s", err, out)
	}
	vm := &vmInstance{socket: filepath.Join(dir, "qga.sock"), qmp: filepath.Join(dir, "qmp.sock"), console: &harness.SyncBuffer{}}
	vm.cmd = exec.Command("qemu-system-x86_64",
		"-accel", "tcg", "-m", "1024", "-smp", "1",
		"-nographic", "-no-reboot", "-nodefaults",
		"-kernel", guestimage.Kernel(kver), "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=3",
		"-serial", "stdio",
		"-chardev", "socket,path="+vm.socket+",server=on,wait=off,id=qga0",
		"-qmp", "unix:"+vm.qmp+",server=on,wait=off",
		"-device", "virtio-serial-pci,id=vser0",
		"-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0,id="+portID,
		"-drive", "file="+disk+",if=virtio,format=raw",
	)
	vm.cmd.Stdout, vm.cmd.Stderr = vm.console, vm.console
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu (install qemu-system-x86): %v", err)
	}
	t.Cleanup(func() {
		_ = vm.cmd.Process.Kill()
		_, _ = vm.cmd.Process.Wait()
		if t.Failed() {
			t.Logf("VM console:\n%s", vm.console.String())
		}
	})
	return vm
}

func guestctl(t *testing.T, socket string, args ...string) (string, error) {
	t.Helper()
	full := append([]string{"--socket", socket, "--timeout", "5s"}, args...)
	out, err := exec.Command(filepath.Join(harness.BinDir(t), "guestctl"), full...).CombinedOutput()
	return string(out), err
}

func TestVMVirtioSerial(t *testing.T) {
	start := time.Now()
	vm := bootVM(t)

	// Wait for the agent: guestctl's sync handshake fails until it serves.
	deadline := time.Now().Add(150 * time.Second)
	for {
		out, err := guestctl(t, vm.socket, "ping")
		if err == nil {
			t.Logf("agent answered %s after boot start: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
			break
		}
		if time.Now().After(deadline) || strings.Contains(vm.console.String(), "guest-agent-vm: agent exited") {
			t.Fatalf("agent in the VM never answered: %v %s", err, out)
		}
		time.Sleep(time.Second)
	}

	// Every boot here is a first boot (the state directory is on a tmpfs):
	// the plugins' manifests tell the agent every command, so guest-info
	// lists them all at once, within libvirt's 5 s, without starting a
	// command plugin.
	infoStart := time.Now()
	out, err := guestctl(t, vm.socket, "info")
	t.Logf("first guest-info (guestctl, with its sync handshake) answered in %s", time.Since(infoStart).Round(time.Millisecond))
	if err != nil || !strings.Contains(out, "guest-sync-delimited") || !strings.Contains(out, "guest-ping") || !strings.Contains(out, "guest-get-host-name") {
		t.Fatalf("info: %v\n%s", err, out)
	}
	out, err = guestctl(t, vm.socket, "call", "guest-sync", `{"id":31337}`)
	if err != nil || strings.TrimSpace(out) != "31337" {
		t.Fatalf("guest-sync: %v %q", err, out)
	}
	out, err = guestctl(t, vm.socket, "call", "no-such-command")
	if err == nil || !strings.Contains(out, "CommandNotFound: The command no-such-command has not been found") {
		t.Fatalf("unknown command: %v %q", err, out)
	}
	// guestctl exec over the real port: output, stdin and the exit code,
	// the stream, stdin and the reads sharing the one host connection.
	execCmd := exec.Command(filepath.Join(harness.BinDir(t), "guestctl"), "--socket", vm.socket, "--timeout", "10s",
		"exec", "-i", "--", "sh", "-c", "read x; echo got $x; echo err >&2; exit 3")
	execCmd.Stdin = strings.NewReader("through the port\n")
	var execOut, execErr strings.Builder
	execCmd.Stdout, execCmd.Stderr = &execOut, &execErr
	err = execCmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || execOut.String() != "got through the port\n" || execErr.String() != "err\n" {
		t.Fatalf("guestctl exec: %v, stdout %q, stderr %q", err, execOut.String(), execErr.String())
	}

	// A malformed request, then a partial request cut by a host disconnect:
	// the agent answers the first with an error and drops the second.
	c := dialRetry(t, vm.socket)
	line, err := c.Call("{bad json}\n")
	if err != nil {
		t.Fatalf("malformed request: %v", err)
	}
	if r, _ := harness.Decode(t, line); r.Error == nil || r.Error.Class != "GenericError" {
		t.Fatalf("malformed request: %q", line)
	}
	c.Close()

	// A partial request cut by a host disconnect that the guest sees (the
	// host stays away a moment): the agent drops the partial bytes, and a
	// plain request on the next connection works without any resync.
	for i := 0; i < 3; i++ {
		c = dialRetry(t, vm.socket)
		if _, err := c.Write([]byte(`{"execute":"guest-sync","argu`)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		c.Close()
		time.Sleep(time.Second)
		c = dialRetry(t, vm.socket)
		want := fmt.Sprint(100 + i)
		line, err = c.Call(`{"execute":"guest-sync","arguments":{"id":` + want + `}}` + "\n")
		if err != nil {
			t.Fatalf("after reconnect %d: %v", i, err)
		}
		if r, _ := harness.Decode(t, line); r.Error != nil || string(r.Return) != want {
			t.Fatalf("after reconnect %d: %q", i, line)
		}
		c.Close()
	}

	// A reconnect too fast for the guest to notice looks like one unbroken
	// stream (to qemu-ga as well): the host resynchronises with 0xFF and
	// guest-sync-delimited, as libvirt does, and the partial bytes go.
	c = dialRetry(t, vm.socket)
	if _, err := c.Write([]byte(`{"execute":"guest-sync","argu`)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c = dialRetry(t, vm.socket)
	line, err = c.Call("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":555}}\n")
	if err != nil {
		t.Fatalf("resync after a fast reconnect: %v", err)
	}
	if r, delim := harness.Decode(t, line); !delim || string(r.Return) != "555" {
		t.Fatalf("resync after a fast reconnect: %q", line)
	}
	c.Close()
	if _, err := guestctl(t, vm.socket, "ping"); err != nil {
		t.Fatalf("ping after reconnects: %v", err)
	}

	// What the idle agent costs in the guest (logged for the README).
	c = dialRetry(t, vm.socket)
	procs := guestSh(t, c, `for p in /proc/[0-9]*; do a=$(tr '\0' ' ' < $p/cmdline 2>/dev/null); case "$a" in *guest-agent*) echo "$a $(grep VmRSS $p/status | tr -s ' ' | cut -d' ' -f2)";; esac; done`)
	c.Close()
	t.Logf("agent processes in the guest (argv, VmRSS kB):\n%s", procs)
	// The exchange handed the port to the parser with its host watch and
	// was stopped (hand_over_port, the default).
	if !strings.Contains(procs, "parser-json") || strings.Contains(procs, "exchange-virtio") {
		t.Fatalf("the parser should serve the port alone in the guest:\n%s", procs)
	}

	t.Run("fire and forget", func(t *testing.T) { checkFireAndForget(t, vm) })
	t.Run("reconnect storm", func(t *testing.T) { checkReconnectStorm(t, vm) })
	t.Run("port unplugged and plugged again", func(t *testing.T) { checkReplug(t, vm) })

	copyStart := time.Now()
	t.Run("file copy", func(t *testing.T) { checkFileCopy(t, vm) })
	t.Logf("file copy took %s", time.Since(copyStart).Round(time.Millisecond))

	fsfreezeStart := time.Now()
	t.Run("fsfreeze", func(t *testing.T) { checkFsfreeze(t, vm) })
	t.Logf("fsfreeze check took %s", time.Since(fsfreezeStart).Round(time.Millisecond))
	t.Logf("VM test done in %s", time.Since(start).Round(time.Millisecond))
}

func dialRetry(t *testing.T, socket string) *harness.Conn {
	t.Helper()
	var err error
	for i := 0; i < 50; i++ {
		var c *harness.Conn
		if c, err = harness.Dial(socket); err == nil {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("dial %s: %v", socket, err)
	return nil
}

package libvirt

import (
	"context"
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

// domainPrefix names the test's domains (and finds their QEMU processes).
const domainPrefix = "ga-libvirt-"

// bootTag is printed by the guest's init on each boot: a reboot is seen on
// the console before the agent is asked anything.
const bootTag = "guest-init: boot "

// guestInit is the guest's /init: an installed guest in miniature. It
// mounts /run as a tmpfs, loads the virtio modules, brings up lo and eth0
// (QEMU's user network gives 10.0.2.15; IPv6 on lo only), makes the /dev/virtio-ports names
// udev would make, mounts the virtio disk at /var/lib/guest-agent and runs
// the agent chosen by agent= on the kernel command line with no arguments,
// restarting it if it exits. As systemd would, it turns SIGTERM, SIGUSR1
// and SIGUSR2 (sent by /sbin/reboot, halt, poweroff and shutdown below)
// into a clean stop, a sync and the reboot or power-off. The kernel's
// console log level is raised so that SysRq-W (sent by the host when a
// step hangs) shows the blocked tasks with their stacks on the console.
const guestInit = `#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o mode=0755,nosuid,nodev run /run
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1
say() { echo "guest-init: $*"; }
say "boot $(cut -d' ' -f1 /proc/uptime)"
echo 1 > /proc/sys/kernel/sysrq
for m in /lib/modules/*.ko; do insmod "$m" || say "insmod $m failed"; done
echo 7 > /proc/sys/kernel/printk
hostname ga-guest
chown -R 1000:1000 /home/tester
ip link set lo up
# Addresses that do not depend on when the agent is asked: no IPv6 on eth0
# (its link-local address comes after duplicate address detection, its
# global one with QEMU's router advertisement); lo keeps ::1.
echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6
if ip link set eth0 up; then
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
fi
i=0
while ! grep -qs org.qemu.guest_agent.0 /sys/class/virtio-ports/*/name && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do ln -sf "../${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 /dev/vda /var/lib/guest-agent || say "mounting /dev/vda failed"
agent=guest-agent
for a in $(cat /proc/cmdline); do case "$a" in agent=*) agent=${a#agent=};; esac; done
start() {
  case "$agent" in
  qemu-ga) /usr/sbin/qemu-ga & ;;
  *) /usr/sbin/guest-agent & ;;
  esac
  pid=$!
  say "$agent started, pid $pid, $(cut -d' ' -f1 /proc/uptime) s after boot"
}
act=
trap 'act=reboot' TERM
trap 'act=halt' USR1
trap 'act=poweroff' USR2
start
while [ -z "$act" ]; do
  sleep 1 & wait $!
  if [ -z "$act" ] && ! kill -0 $pid 2>/dev/null; then
    wait $pid
    say "$agent exited with $?: restarting"
    start
  fi
done
say "$act requested"
kill -TERM $pid 2>/dev/null
i=0
while kill -0 $pid 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
(sync; umount /var/lib/guest-agent) &
i=0
while kill -0 $! 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
say "$act now"
/bin/busybox $act -f
`

// The shutdown programs of the guest ask init, as systemctl does: qemu-ga
// runs /sbin/shutdown -h -r|-P|-H +0 MSG; guest-agent prefers /sbin/reboot,
// /sbin/poweroff and /sbin/halt when they exist.
const (
	shutdownScript = `#!/bin/sh
case " $* " in
*" -r "*) kill -TERM 1 ;;
*" -H "*) kill -USR1 1 ;;
*) kill -USR2 1 ;;
esac
`
	rebootScript   = "#!/bin/sh\nkill -TERM 1\n"
	haltScript     = "#!/bin/sh\nkill -USR1 1\n"
	poweroffScript = "#!/bin/sh\nkill -USR2 1\n"
)

// chpasswdScript is chpasswd in miniature (busybox-static has none):
// "user:password" lines on stdin, -e for passwords crypt()ed already. Both
// agents run it.
const chpasswdScript = `#!/bin/sh
crypted=
case "$1" in -e|--encrypted) crypted=1 ;; esac
while IFS= read -r line; do
  user=${line%%:*}
  pass=${line#*:}
  grep -q "^$user:" /etc/shadow || { echo "chpasswd: user '$user' does not exist" >&2; exit 1; }
  if [ -n "$crypted" ]; then hash=$pass; else hash=$(printf '%s' "$pass" | mkpasswd -m sha512 -P 0) || exit 1; fi
  awk -F: -v OFS=: -v u="$user" -v h="$hash" '$1 == u { $2 = h } { print }' /etc/shadow > /etc/shadow.new &&
    chmod 640 /etc/shadow.new && mv /etc/shadow.new /etc/shadow || exit 1
done
`

// guestModules: virtio PCI, the agent's port, the state disk with ext4,
// and the network card.
var guestModules = []string{"virtio_pci", "virtio_console", "virtio_blk", "crc32c_generic", "ext4", "virtio_net"}

// guestUser is the guest's ordinary user (password and SSH keys).
const guestUser = "tester"

// buildGuest makes the initramfs shared by every boot: both agents
// installed as their packages install them, the guest's users, its
// os-release, and the init above.
func buildGuest(t *testing.T, kver, bin string) string {
	im := guestimage.New(t)
	im.AddModules(kver, guestModules...)
	im.AddAgent(bin, "/usr/sbin", "/usr/lib/guest-agent/plugins")
	im.AddDynamic("/usr/sbin/qemu-ga")
	im.Write("/init", guestInit, 0o755)
	im.Write("/sbin/shutdown", shutdownScript, 0o755)
	im.Write("/sbin/reboot", rebootScript, 0o755)
	im.Write("/usr/sbin/chpasswd", chpasswdScript, 0o755)
	im.Write("/sbin/halt", haltScript, 0o755)
	im.Write("/sbin/poweroff", poweroffScript, 0o755)
	im.Write("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"+guestUser+":x:1000:1000:Test User:/home/"+guestUser+":/bin/sh\n", 0o644)
	im.Write("/etc/group", "root:x:0:\n"+guestUser+":x:1000:\n", 0o644)
	im.Write("/etc/shadow", "root:*:20000:0:99999:7:::\n"+guestUser+":!:20000:0:99999:7:::\n", 0o640)
	im.Copy("/usr/lib/os-release", "/etc/os-release", 0o644)
	im.Mkdir("/home/"+guestUser, 0o755)
	im.Mkdir("/var/lib/guest-agent", 0o755)
	im.Symlink("../run", "/var/run")
	return im.Archive()
}

// stateDisk makes the guest's /var/lib/guest-agent: an ext4 image whose
// root is the agent's state directory as its package leaves it, empty.
func stateDisk(t *testing.T, dir string) string {
	empty := filepath.Join(dir, "state-root")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "state.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "gastate", "-d", empty, disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (install e2fsprogs): %v\n%s", err, out)
	}
	return disk
}

const domainXML = `<domain type='qemu'>
  <name>%[1]s</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%[2]s</kernel>
    <initrd>%[3]s</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet agent=%[4]s</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' discard='unmap'/>
      <source file='%[5]s'/>
      <target dev='vda' bus='virtio'/>
      <serial>gastate</serial>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:6a:61:01'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='%[6]s' append='on'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`

// domain is one transient TCG domain running one agent.
type domain struct {
	d       *daemon
	name    string
	agent   string
	console string // the serial console's file
	started time.Time
}

// startDomain defines and starts a transient domain booting the kernel
// and initramfs with agent= agent and a fresh state disk; it is destroyed
// when the test ends.
func startDomain(t *testing.T, ctx context.Context, d *daemon, kver, initrd, agent string) *domain {
	dir := harness.ShortTempDir(t)
	dom := &domain{d: d, name: domainPrefix + agent, agent: agent, console: filepath.Join(dir, "console.log")}
	xml := fmt.Sprintf(domainXML, dom.name, guestimage.Kernel(kver), initrd, agent, stateDisk(t, dir), dom.console)
	xmlPath := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	dom.started = time.Now()
	if out, _, err := d.virsh(ctx, 60*time.Second, "create", xmlPath); err != nil {
		t.Fatalf("virsh create: %v\n%s\nQEMU log:\n%s", err, out, dom.qemuLog())
	}
	t.Cleanup(func() {
		keepLog(t, dom.name+".console.log", readFile(dom.console))
		keepLog(t, dom.name+".qemu.log", dom.qemuLog())
		if t.Failed() {
			t.Logf("%s: QEMU log (tail):\n%s", dom.name, tail(dom.qemuLog(), 20))
			t.Logf("%s: console (tail):\n%s", dom.name, tail(readFile(dom.console), 80))
		}
		// A fresh context: the test's own may have run out.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, _, err := d.virsh(ctx, 30*time.Second, "domstate", dom.name); err == nil && out != "" {
			if out, _, err := d.virsh(ctx, 30*time.Second, "destroy", dom.name); err != nil {
				t.Logf("virsh destroy %s: %v %s", dom.name, err, out)
			}
		}
	})
	return dom
}

func (dom *domain) qemuLog() string {
	return readFile(filepath.Join(dom.d.dir, "log", "qemu", dom.name+".log"))
}

// boots counts the boots seen on the console.
func (dom *domain) boots() int {
	return strings.Count(readFile(dom.console), bootTag)
}

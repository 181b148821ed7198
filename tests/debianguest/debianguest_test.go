package debianguest

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/guestimage"
	"github.com/guest-agent/guest-agent/tests/harness"
)

const (
	service = "guest-agent.service"
	port    = "/dev/virtio-ports/org.qemu.guest_agent.0"
	// agentProcs prints "PID EXE" of every process of the agent: the
	// supervisor and its plugins, found by executable (an upgraded one
	// shows " (deleted)"). One ls: a fork per process costs seconds
	// under TCG.
	agentProcs = `ls -l /proc/[0-9]*/exe 2>/dev/null | sed -nE 's#.* /proc/([0-9]+)/exe -> (/usr/sbin/guest-agent.*|/usr/lib/guest-agent/.*)#\1 \2#p'`
	// removedPlugin is the plugin package the test removes, with the
	// meta-package that depends on it, and a command it serves.
	removedPlugin  = "guest-agent-plugin-network"
	removedCommand = "guest-network-get-interfaces"
)

// env is a required environment variable (the guest-test make target sets
// them all).
func env(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run the test through `make guest-test`", name)
	}
	return v
}

// TestDebianGuest installs the packages of make package in a Debian 12
// guest with systemd, and checks from the host how the service behaves.
func TestDebianGuest(t *testing.T) {
	if os.Getenv("GUEST_AGENT_DEBIAN_GUEST") == "" {
		t.Skip("the Debian guest test runs through `make guest-test` (GUEST_AGENT_DEBIAN_GUEST=1)")
	}
	start := time.Now()
	newDist, oldDist := env(t, "GUEST_AGENT_DIST"), env(t, "GUEST_AGENT_OLD_DIST")
	newVersion, oldVersion := env(t, "GUEST_AGENT_VERSION"), env(t, "GUEST_AGENT_OLD_VERSION")
	var summary []string
	report := func(format string, args ...any) {
		s := fmt.Sprintf(format, args...)
		summary = append(summary, s)
		t.Log(s)
	}
	defer func() { t.Logf("summary:\n  %s", strings.Join(summary, "\n  ")) }()

	kver := guestimage.KernelVersion(t)
	root := RootImage(t, kver)
	debs := DebsImage(t, map[string]string{"old": oldDist, "new": newDist})
	report("image ready after %s", time.Since(start).Round(100*time.Millisecond))

	// First boot: the port is there, the agent is not installed yet.
	vm := Boot(t, "first boot", root, debs, true)
	report("first boot: root shell on the serial console %s after qemu started", vm.WaitShell(t, 3*time.Minute).Round(100*time.Millisecond))
	// The packages' disk (the second virtio disk): mounted from here, the
	// channel that does not need the agent.
	vm.MustSh(t, "udevadm settle -t 30; mount -o ro /dev/vdb /mnt/debs && ls /mnt/debs/old /mnt/debs/new >/dev/null", time.Minute)
	vm.MustSh(t, "test -e "+port+" && ! test -e /usr/sbin/guest-agent", 20*time.Second)

	if !t.Run("first install starts the service", func(t *testing.T) {
		installStart := time.Now()
		out, code := vm.Sh(t, "dpkg -i /mnt/debs/old/*.deb", 3*time.Minute)
		installed := time.Now()
		if code != 0 {
			t.Fatalf("dpkg -i of the previous build's packages exited with %d:\n%s", code, out)
		}
		// The postinst re-triggers the port (it was there before the
		// package): the agent must run now without a reboot.
		answered, err := vm.WaitAgent(30 * time.Second)
		if err != nil {
			st, _ := vm.Sh(t, "systemctl status --no-pager "+service+"; journalctl -b --no-pager -u "+service, 20*time.Second)
			t.Fatalf("after the install: %v\n%s\ndpkg:\n%s", err, st, out)
		}
		report("first install: dpkg -i took %s, the agent answered %s after it", installed.Sub(installStart).Round(100*time.Millisecond), answered.Sub(installed).Round(100*time.Millisecond))
		// What starts it at boot and on hot-plug: the rule's SYSTEMD_WANTS
		// on the port's device, a Wants= of its (sysfs) device unit.
		wants := vm.MustSh(t, "udevadm info -q property -n "+port+" | grep -E '^(SYSTEMD_WANTS|CURRENT_TAGS)='; "+
			"echo \"unit-wants=$(systemctl show -p Wants --value \"$(systemd-escape -p --suffix=device \"/sys$(udevadm info -q path -n "+port+")\")\")\"", 20*time.Second)
		if !regexp.MustCompile(`(?m)^unit-wants=.*\b` + regexp.QuoteMeta(service)).MatchString(wants) {
			t.Errorf("the port's device unit does not want %s: the udev rule did not apply\n%s", service, wants)
		}
		info, err := vm.GuestInfo(10 * time.Second)
		if err != nil || info.Version != oldVersion {
			t.Fatalf("guest-info after the first install: version %q (want %q), %v", info.Version, oldVersion, err)
		}
	}) {
		return
	}

	upgraded := t.Run("upgrade restarts onto the new binaries", func(t *testing.T) {
		before := strings.TrimSpace(vm.MustSh(t, "systemctl show -p MainPID --value "+service, 10*time.Second))
		installStart := time.Now()
		out, code := vm.Sh(t, "dpkg -i /mnt/debs/new/*.deb", 3*time.Minute)
		installed := time.Now()
		if code != 0 {
			t.Fatalf("dpkg -i of this build's packages exited with %d:\n%s", code, out)
		}
		var info Info
		var err error
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			if info, err = vm.GuestInfo(5 * time.Second); err == nil && info.Version == newVersion {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("guest-info after the upgrade: version %q (want %q), %v\ndpkg:\n%s", info.Version, newVersion, err, out)
			}
		}
		report("upgrade: dpkg -i took %s, guest-info said %s %s after it", installed.Sub(installStart).Round(100*time.Millisecond), newVersion, time.Since(installed).Round(100*time.Millisecond))
		after := strings.TrimSpace(vm.MustSh(t, "systemctl show -p MainPID --value "+service, 10*time.Second))
		if after == before || after == "0" {
			t.Errorf("the service's main pid was %s before the upgrade and is %s after it", before, after)
		}
		procs := vm.MustSh(t, agentProcs, 20*time.Second)
		if strings.Contains(procs, "(deleted)") || !strings.Contains(procs, "/usr/sbin/guest-agent") {
			t.Errorf("agent processes after the upgrade (pid, executable):\n%s", procs)
		}
		if out, _ := vm.Sh(t, "systemctl --failed --no-legend --plain", 20*time.Second); strings.TrimSpace(out) != "" {
			t.Errorf("failed units after the upgrade:\n%s", out)
		}
	})

	t.Run("fire-and-forget request runs at once", func(t *testing.T) { checkFireAndForget(t, vm, report) })

	t.Run("removing a plugin package removes its commands", func(t *testing.T) {
		info, err := vm.GuestInfo(10 * time.Second)
		if err != nil || !info.Has(removedCommand) {
			t.Fatalf("guest-info before the removal lists no %s: %v", removedCommand, err)
		}
		mainPID := func() string {
			return strings.TrimSpace(vm.MustSh(t, "systemctl show -p MainPID --value "+service, 20*time.Second))
		}
		before := mainPID()
		out, code := vm.Sh(t, "dpkg -r guest-agent-full "+removedPlugin, 2*time.Minute)
		if code != 0 {
			t.Fatalf("dpkg -r exited with %d:\n%s", code, out)
		}
		removed := time.Now()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			info, err = vm.GuestInfo(5 * time.Second)
			if err == nil && !info.Has(removedCommand) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("guest-info 30 s after dpkg -r %s still lists %s (%v)\ndpkg:\n%s", removedPlugin, removedCommand, err, out)
			}
		}
		report("plugin removal: %s gone from guest-info %s after dpkg -r", removedCommand, time.Since(removed).Round(100*time.Millisecond))
		// Without a restart: the agent follows its plugin directory, and
		// the hosts' sessions (a freeze, a running guest-exec) stay.
		if after := mainPID(); after != before || before == "0" {
			t.Errorf("removing a plugin package restarted the agent: MainPID %s, now %s", before, after)
		}
		if !info.Has("guest-get-host-name") || !info.Has("guest-exec") {
			t.Errorf("guest-info lost the other plugins' commands: %+v", info)
		}
		if _, err := vm.Call(removedCommand, nil, 10*time.Second, false); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
			t.Errorf("%s after its package was removed: %v", removedCommand, err)
		}
	})

	t.Run("systemctl stop leaves no agent process", func(t *testing.T) {
		// A guest-exec child in the unit's cgroup, as a host would leave
		// one running.
		if _, err := vm.Call("guest-exec", map[string]any{"path": "/bin/sleep", "arg": []string{"1001"}}, 20*time.Second, false); err != nil {
			t.Fatalf("guest-exec sleep: %v", err)
		}
		before := vm.MustSh(t, agentProcs+"; pgrep -a -x sleep", 20*time.Second)
		out := vm.MustSh(t, "s=$(date +%s%N); systemctl stop "+service+"; echo took=$((($(date +%s%N)-s)/1000000)); echo active=$(systemctl is-active "+service+"); "+agentProcs+
			"; pgrep -a -x sleep | sed 's/^/child /'; cat /sys/fs/cgroup/system.slice/"+service+"/cgroup.procs 2>/dev/null | sed 's/^/cgroup /'; true", time.Minute)
		took, out, _ := strings.Cut(out, "\n")
		report("systemctl stop: %s ms in the guest (before it: agent, plugins and a guest-exec child:\n    %s)", strings.TrimPrefix(took, "took="), strings.ReplaceAll(strings.TrimSpace(before), "\n", "\n    "))
		if strings.TrimSpace(out) != "active=inactive" {
			st, _ := vm.Sh(t, "journalctl -b --no-pager -n 40 -u "+service, 20*time.Second)
			t.Errorf("left after systemctl stop:\n%s\njournal:\n%s", out, st)
		}
		vm.MustSh(t, "systemctl start "+service, time.Minute)
		if _, err := vm.WaitAgent(30 * time.Second); err != nil {
			t.Fatalf("after systemctl start: %v", err)
		}
	})

	t.Run("port removal stops it, hot-plugged port starts it", func(t *testing.T) {
		if _, err := vm.WaitAgent(10 * time.Second); err != nil {
			t.Fatalf("not running before the unplug: %v", err)
		}
		if _, err := vm.QMPCommand("device_del", map[string]any{"id": PortID}); err != nil {
			t.Fatal(err)
		}
		unplugged := time.Now()
		var out string
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			out, _ = vm.Sh(t, "echo active=$(systemctl is-active "+service+"); test -e "+port+" && echo port-still-there; "+agentProcs, 20*time.Second)
			if strings.TrimSpace(out) == "active=inactive" {
				break
			}
			if time.Now().After(deadline) {
				st, _ := vm.Sh(t, "systemctl status --no-pager "+service, 20*time.Second)
				t.Fatalf("30 s after device_del:\n%s\n%s", out, st)
			}
		}
		report("hot-plug: device_del stopped the service within %s", time.Since(unplugged).Round(100*time.Millisecond))
		if _, err := vm.QMPCommand("device_add", map[string]any{"driver": "virtserialport", "bus": "vser0.0", "chardev": "qga0",
			"name": "org.qemu.guest_agent.0", "id": PortID}); err != nil {
			t.Fatal(err)
		}
		plugged := time.Now()
		answered, err := vm.WaitAgent(60 * time.Second)
		if err != nil {
			st, _ := vm.Sh(t, "ls -l /dev/virtio-ports; systemctl status --no-pager "+service, 20*time.Second)
			t.Fatalf("after device_add: %v\n%s", err, st)
		}
		report("hot-plug: device_add started the service, first answer %s after it", answered.Sub(plugged).Round(100*time.Millisecond))
	})

	t.Run("guest-shutdown powers off through systemd", func(t *testing.T) {
		// systemd's status lines on the console from now on (as
		// systemd.show_status=1): the shutdown shows its units stopping.
		vm.MustSh(t, "kill -s RTMIN+20 1", 10*time.Second)
		from := len(vm.Console())
		if _, err := vm.Call("guest-shutdown", map[string]any{"mode": "powerdown"}, 10*time.Second, true); err != nil {
			t.Fatal(err)
		}
		sent := time.Now()
		exited, err := vm.WaitExit(2 * time.Minute)
		if !exited {
			t.Fatalf("qemu still runs 2 min after guest-shutdown")
		}
		console := ansi.ReplaceAllString(vm.Console()[from:], "")
		report("guest-shutdown: qemu exited %s after it", time.Since(sent).Round(100*time.Millisecond))
		if err != nil {
			t.Errorf("qemu: %v", err)
		}
		// Status lines are cut to 80 columns with an ellipsis.
		for _, want := range []string{"Stopped guest-agent.servic", "Reached target poweroff.target", "reboot: Power down"} {
			if !strings.Contains(console, want) {
				t.Errorf("the console after guest-shutdown shows no %q (not a systemd power-off?):\n%s", want, console)
			}
		}
	})
	vm.Kill()
	if !upgraded {
		return
	}

	// Second boot of the same image: udev starts the agent when the port
	// appears at boot.
	t.Run("service starts at boot", func(t *testing.T) {
		vm := Boot(t, "second boot", root, debs, true)
		answered, err := vm.WaitAgent(4 * time.Minute)
		if err != nil {
			vm.WaitShell(t, time.Minute)
			st, _ := vm.Sh(t, "systemctl status --no-pager "+service+"; journalctl -b --no-pager -u "+service, 20*time.Second)
			t.Fatalf("second boot: %v\n%s", err, st)
		}
		report("boot to first answer (qemu start to the first answered guest-ping, second boot): %s", answered.Sub(vm.Started).Round(100*time.Millisecond))
		shell := vm.WaitShell(t, 2*time.Minute)
		analyze, _ := vm.Sh(t, "systemd-analyze time 2>&1 | head -1", 20*time.Second)
		report("second boot: root shell on the serial console %s after qemu started; systemd-analyze: %s", shell.Round(100*time.Millisecond), strings.TrimSpace(analyze))
		info, err := vm.GuestInfo(10 * time.Second)
		if err != nil || info.Version != newVersion || info.Has(removedCommand) || !info.Has("guest-get-host-name") {
			t.Errorf("guest-info at boot: version %q (want %q), %s listed %v: %v", info.Version, newVersion, removedCommand, info.Has(removedCommand), err)
		}
		// Idle: nothing but guest-ping and guest-info has been asked.
		time.Sleep(10 * time.Second)
		if pss := measureMemory(t, vm, report, "idle"); pss > idleMemoryBar {
			t.Errorf("idle agent: %.1f MiB PSS, over the %.0f MiB bar", pss, idleMemoryBar)
		}
		// After use: command plugins started by commands leave once idle
		// (plugin_idle_exit, 30 s by default) and memory is back.
		checkIdleExit(t, vm, report)
		if out, _ := vm.Sh(t, "systemctl --failed --no-legend --plain", 20*time.Second); strings.TrimSpace(out) != "" {
			t.Errorf("failed units at boot:\n%s", out)
		}
		// Purge: the service stops and nothing of the agent is left, its
		// state and configuration directories included.
		t.Run("purge leaves nothing", func(t *testing.T) {
			out, code := vm.Sh(t, "dpkg -P $(dpkg-query -W -f '${Package} ' 'guest-agent*' guestctl)", 2*time.Minute)
			if code != 0 {
				t.Errorf("dpkg -P of every package exited with %d:\n%s", code, out)
			}
			left := vm.MustSh(t, agentProcs+"; ls -d /var/lib/guest-agent* /run/guest-agent* /etc/guest-agent /usr/lib/guest-agent /usr/sbin/guest-agent "+
				"/usr/lib/systemd/system/guest-agent* /usr/lib/udev/rules.d/*guest-agent* 2>/dev/null; echo active=$(systemctl is-active "+service+")", 30*time.Second)
			if strings.TrimSpace(left) != "active=inactive" {
				t.Errorf("left after dpkg -P:\n%s", left)
			}
		})
		// The guest may be gone before the shell prints its end marker.
		if _, _, err := vm.TrySh("systemctl --no-block poweroff", 20*time.Second); err != nil && !vm.Exited() {
			t.Errorf("poweroff: %v", err)
		}
		if exited, _ := vm.WaitExit(2 * time.Minute); !exited {
			t.Errorf("qemu still runs 2 min after systemctl poweroff")
		}
	})
	report("whole test: %s", time.Since(start).Round(time.Second))
}

// ansi matches the colour escapes of systemd's status lines.
var ansi = regexp.MustCompile("\x1b\\[[0-9;]*m")

// checkFireAndForget: a host writes one request and closes the port's
// socket at once (printf '...' | socat - UNIX-CONNECT:...). qemu-ga runs it
// at once; so must the agent, while no host is connected, and its reply
// must never reach the next host.
func checkFireAndForget(t *testing.T, vm *VM, report func(string, ...any)) {
	const file = "/run/fire-and-forget"
	vm.MustSh(t, "rm -f "+file, 10*time.Second)
	c, err := harness.Dial(vm.QGA)
	if err != nil {
		t.Fatal(err)
	}
	req := `{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","date +%s.%N > ` + file + `"]}}` + "\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	sent := time.Now()
	// No host connects meanwhile: the serial console looks.
	var ran time.Duration
	for deadline := sent.Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if out, _ := vm.Sh(t, "cat "+file+" 2>/dev/null", 10*time.Second); strings.TrimSpace(out) != "" {
			ran = time.Since(sent)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fire-and-forget guest-exec did not run within 15 s while no host was connected")
		}
	}
	report("fire-and-forget: the guest-exec was seen done %s after the host left (looked at over the serial console)", ran.Round(100*time.Millisecond))
	c, err = harness.Dial(vm.QGA)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stale, err := c.SyncDelimited(9090, 10*time.Second)
	if err != nil {
		t.Fatalf("sync after a fire-and-forget request: %v", err)
	}
	if len(stale) != 0 {
		t.Fatalf("the next host's first line is not its sync's reply: %q", stale)
	}
}

// measureMemory reports what the idle agent costs in the guest: VmRSS,
// RSS and PSS (smaps_rollup) of each of its processes, summed, and the
// unit's cgroup memory.current (its page cache included) with the anon and
// file parts of memory.stat. VmRSS comes from the kernel's per-thread
// counters, which 6.1 syncs only every 64 page faults: smaps_rollup's Rss
// is exact.
func measureMemory(t *testing.T, vm *VM, report func(string, ...any), when string) (pssMiB float64) {
	script := agentProcs + ` | while read pid exe; do ` +
		`echo "proc $pid $(awk '/^VmRSS:/{print $2}' /proc/$pid/status) $(awk '/^Rss:/{print $2}' /proc/$pid/smaps_rollup) $(awk '/^Pss:/{print $2}' /proc/$pid/smaps_rollup) ${exe##*/}"; done; ` +
		`cg=/sys/fs/cgroup$(systemctl show -p ControlGroup --value ` + service + `); ` +
		`echo "cgroup $(cat $cg/memory.current 2>/dev/null || echo 0)"; ` +
		`grep -E '^(anon|file|kernel|sock) ' $cg/memory.stat 2>/dev/null | sed 's/^/stat /'`
	out := vm.MustSh(t, script, 30*time.Second)
	var vmrss, rss, pss int
	var procs []string
	var cgroup int64
	stat := map[string]int64{}
	re := regexp.MustCompile(`^proc (\d+) (\d+) (\d+) (\d+) (\S+)`)
	for _, line := range strings.Split(out, "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			v, _ := strconv.Atoi(m[2])
			r, _ := strconv.Atoi(m[3])
			p, _ := strconv.Atoi(m[4])
			vmrss, rss, pss = vmrss+v, rss+r, pss+p
			procs = append(procs, fmt.Sprintf("%s %.1f/%.1f/%.1f", m[5], float64(v)/1024, float64(r)/1024, float64(p)/1024))
			continue
		}
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "cgroup":
			cgroup, _ = strconv.ParseInt(f[1], 10, 64)
		case len(f) == 3 && f[0] == "stat":
			stat[f[1]], _ = strconv.ParseInt(f[2], 10, 64)
		}
	}
	if len(procs) == 0 {
		t.Fatalf("no agent process in the guest:\n%s", out)
	}
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	report("%s memory, %d agent processes: VmRSS %.1f MiB, RSS %.1f MiB, PSS %.1f MiB (each VmRSS/RSS/PSS MiB: %s); the unit's cgroup memory.current %.1f MiB (anon %.1f, file %.1f, kernel %.1f)",
		when, len(procs), float64(vmrss)/1024, float64(rss)/1024, float64(pss)/1024, strings.Join(procs, ", "), mib(cgroup), mib(stat["anon"]), mib(stat["file"]), mib(stat["kernel"]))
	return float64(pss) / 1024
}

// idleMemoryBar is design.md's bar for all agent processes of an idle
// agent in a real guest (qemu-ga: about 6 MiB), in PSS.
const idleMemoryBar = 40.0

// checkIdleExit runs commands of two command plugins (cmd-system through
// guest-get-host-name, cmd-exec through a guest-exec whose status is
// collected), then waits for both plugins to leave on their own, measures
// the memory again and checks that the next command starts its plugin anew.
// The probes run on the serial console, not through the agent.
func checkIdleExit(t *testing.T, vm *VM, report func(string, ...any)) {
	if _, err := vm.Call("guest-get-host-name", nil, 20*time.Second, false); err != nil {
		t.Fatalf("guest-get-host-name: %v", err)
	}
	r, err := vm.Call("guest-exec", map[string]any{"path": "/bin/true"}, 20*time.Second, false)
	if err != nil || r.Error != nil {
		t.Fatalf("guest-exec: %v %+v", err, r.Error)
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(r.Return, &started); err != nil {
		t.Fatalf("guest-exec reply %s: %v", r.Return, err)
	}
	for i := 0; ; i++ {
		// Collected, the status no longer keeps cmd-exec busy.
		st, err := vm.Call("guest-exec-status", map[string]any{"pid": started.PID}, 20*time.Second, false)
		if err != nil || st.Error != nil {
			t.Fatalf("guest-exec-status: %v %+v", err, st.Error)
		}
		if strings.Contains(string(st.Return), `"exited":true`) {
			break
		}
		if i == 50 {
			t.Fatalf("/bin/true did not exit: %s", st.Return)
		}
		time.Sleep(100 * time.Millisecond)
	}
	used := time.Now()
	plugins := func() string {
		out := vm.MustSh(t, agentProcs+" | sed -n 's#.*/guest-agent-cmd-##p' | sort | tr '\\n' ' '", 30*time.Second)
		return strings.TrimSpace(out)
	}
	if running := plugins(); !strings.Contains(running, "system") || !strings.Contains(running, "exec") {
		t.Fatalf("cmd-system and cmd-exec should run after their commands: %q", running)
	}
	for deadline := used.Add(75 * time.Second); ; {
		running := plugins()
		if running == "" {
			report("command plugins used (cmd-system, cmd-exec), then left on their own %s after their last command (plugin_idle_exit 30 s)",
				time.Since(used).Round(time.Second))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("command plugins still running %s after their last command: %q", time.Since(used).Round(time.Second), running)
		}
		time.Sleep(2 * time.Second)
	}
	if pss := measureMemory(t, vm, report, "after use and idle exit"); pss > idleMemoryBar {
		t.Errorf("agent after use: %.1f MiB PSS, over the %.0f MiB bar", pss, idleMemoryBar)
	}
	if _, err := vm.Call("guest-get-host-name", nil, 20*time.Second, false); err != nil {
		t.Fatalf("guest-get-host-name after cmd-system left: %v", err)
	}
}

// Package libvirt drives the agent the way most hosts do: through
// libvirt. A libvirtd of the test's own (Debian's, in private namespaces)
// boots a TCG domain with Debian's kernel and a busybox initramfs holding
// the agent installed as a package installs it, its state directory on a
// virtio disk, and virsh runs the agent commands libvirt offers, once with
// guest-agent in the guest and once with Debian's qemu-ga in the same
// guest, step by step compared.
//
// GUEST_AGENT_LIBVIRT=1 runs it (make libvirt-test); with
// GUEST_AGENT_LIBVIRT_LOGS=DIR the consoles, QEMU's logs and libvirtd's log
// (with the agent I/O libvirt saw) are kept in DIR; GUEST_AGENT_LIBVIRT_AGENTS
// ="guest-agent" boots one agent alone.
package libvirt

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/guestimage"
	"github.com/guest-agent/guest-agent/tests/harness"
)

const (
	// agentTimeout is libvirt's agent timeout for the domains (virsh
	// guest-agent-timeout): libvirt's default waits forever, and a command
	// that never returns holds the domain's agent job for good.
	agentTimeout = 10 * time.Second
	// virshTimeout bounds each virsh call from the outside.
	virshTimeout = 40 * time.Second
	// bootTimeout bounds a boot to the agent's first answer.
	bootTimeout = 150 * time.Second
)

// step is what one virsh step gave with one agent.
type step struct {
	name  string
	ok    bool
	out   string        // virsh's output, or its error
	shape string        // what is compared between the agents
	took  time.Duration // the virsh call (or the wait) alone
	hung  bool          // no answer within the deadline
	note  string        // the agent-specific check's finding, if any
}

// run is one agent's pass through every step.
type run struct {
	t     *testing.T
	ctx   context.Context
	dom   *domain
	steps []*step
	// lost is set once the guest no longer answers even after a reset:
	// the remaining steps are recorded as not run.
	lost bool
}

func TestLibvirt(t *testing.T) {
	if os.Getenv("GUEST_AGENT_LIBVIRT") == "" {
		t.Skip("the libvirt test runs through `make libvirt-test` (GUEST_AGENT_LIBVIRT=1)")
	}
	start := time.Now()
	// The whole test stops well before go test's -timeout, which would end
	// the binary without running any cleanup.
	ctx := context.Background()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-45*time.Second))
		defer cancel()
	}
	bin := harness.BinDir(t)
	kver := guestimage.KernelVersion(t)
	initrd := buildGuest(t, kver, bin)
	t.Logf("initramfs built in %s", time.Since(start).Round(time.Millisecond))
	d := startDaemon(t, ctx)

	runs := map[string]*run{}
	agents := []string{"qemu-ga", "guest-agent"}
	if a := os.Getenv("GUEST_AGENT_LIBVIRT_AGENTS"); a != "" {
		agents = strings.Fields(a) // one of them alone, while debugging
	}
	for _, agent := range agents {
		r := &run{ctx: ctx}
		runs[agent] = r
		t.Run(agent, func(t *testing.T) {
			r.t = t
			runStart := time.Now()
			r.dom = startDomain(t, ctx, d, kver, initrd, agent)
			r.all()
			t.Logf("%s: all steps in %s", agent, time.Since(runStart).Round(time.Second))
		})
	}
	compare(t, runs["qemu-ga"], runs["guest-agent"])
	if ref, ga := runs["qemu-ga"], runs["guest-agent"]; ref != nil && ga != nil && len(ref.steps) > 1 && len(ga.steps) > 1 {
		t.Logf("domain start to the first answered guest-ping: guest-agent %s, qemu-ga %s (%.2f×); the first guest-info: guest-agent %s (ok=%v), qemu-ga %s (ok=%v)",
			ga.steps[0].took.Round(time.Millisecond), ref.steps[0].took.Round(time.Millisecond),
			ga.steps[0].took.Seconds()/ref.steps[0].took.Seconds(),
			ga.steps[1].took.Round(time.Millisecond), ga.steps[1].ok, ref.steps[1].took.Round(time.Millisecond), ref.steps[1].ok)
	}
	t.Logf("libvirt test done in %s", time.Since(start).Round(time.Second))
}

// all runs the steps in order: the first answers after boot, the
// information commands, the password and keys, the freezes, a reset while
// frozen, the reboot and the shutdown.
func (r *run) all() {
	if _, _, err := r.virsh("guest-agent-timeout", r.dom.name, "--timeout", strconv.Itoa(int(agentTimeout/time.Second))); err != nil {
		r.t.Fatalf("guest-agent-timeout: %v", err)
	}
	r.waitFirstAnswer()
	r.firstGuestInfo()
	r.guestctl()
	r.guestinfo()
	r.domfsinfo()
	r.domifaddr()
	r.domtime("domtime")
	r.check("domtime --sync", func(s *step) { s.shape = "ok" }, "domtime", r.dom.name, "--sync")
	r.check("guestvcpus", func(s *step) { s.shape = s.out }, "guestvcpus", r.dom.name)
	r.check("domfstrim", func(s *step) { s.shape = "ok" }, "domfstrim", r.dom.name)
	r.setUserPassword()
	r.sshKeys()
	r.freezeThaw()
	r.freezeThaw("--mountpoint", "/var/lib/guest-agent")
	r.resetWhileFrozen()
	r.reboot()
	r.shutdown()
}

// virsh runs virsh against the daemon with the usual deadline.
func (r *run) virsh(args ...string) (string, time.Duration, error) {
	return r.dom.d.virsh(r.ctx, virshTimeout, args...)
}

// record runs one virsh step and records it. A step that had no answer
// (virsh killed at its deadline, or libvirt's agent timeout) fails with the
// guest's blocked tasks; when the agent then no longer answers guest-ping
// either, the guest is reset so the steps after it start from a guest that
// answers.
func (r *run) record(name string, args ...string) *step {
	s := r.do(name, args...)
	if !s.hung {
		return s
	}
	blocked := r.blockedTasks()
	s.note = "no answer"
	if r.pings() {
		r.t.Errorf("%s: %s: no answer within %s (guest-ping is answered right after): %s\nthe guest's blocked tasks (SysRq-W):\n%s",
			r.dom.agent, name, s.took.Round(time.Millisecond), s.out, blocked)
		return s
	}
	s.note = "hung"
	r.t.Errorf("%s: %s: no answer within %s, and guest-ping gets none either: %s\nthe guest's blocked tasks (SysRq-W):\n%s",
		r.dom.agent, name, s.took.Round(time.Millisecond), s.out, blocked)
	r.recover(name)
	return s
}

// pings reports whether the agent answers guest-ping through libvirt.
func (r *run) pings() bool {
	_, _, err := r.virsh("qemu-agent-command", r.dom.name, `{"execute":"guest-ping"}`, "--timeout", "5")
	return err == nil
}

// do runs one virsh step and records it.
func (r *run) do(name string, args ...string) *step {
	s := &step{name: name}
	r.steps = append(r.steps, s)
	if r.lost {
		s.out = "not run: the guest was lost in an earlier step"
		return s
	}
	out, took, err := r.virsh(args...)
	s.took = took
	if err != nil {
		s.out = err.Error()
		s.hung = strings.Contains(s.out, errTimeout.Error()) ||
			strings.Contains(s.out, "Guest agent not available for now") ||
			strings.Contains(s.out, "cannot acquire state change lock")
	} else {
		s.ok, s.out = true, out
	}
	return s
}

// check records a step that must succeed with both agents; shape fills in
// what is compared.
func (r *run) check(name string, shape func(*step), args ...string) *step {
	s := r.record(name, args...)
	if s.ok {
		shape(s)
	} else if !s.hung && !r.lost {
		r.t.Errorf("%s: %s: %s", r.dom.agent, name, s.out)
	}
	return s
}

// fail marks s failed with a finding of this agent's own.
func (r *run) fail(s *step, format string, args ...any) {
	s.note = fmt.Sprintf(format, args...)
	r.t.Errorf("%s: %s: %s", r.dom.agent, s.name, s.note)
}

// blockedTasks asks the guest's kernel for its blocked tasks (SysRq-W on
// the virtual keyboard: it needs no agent) and returns what the console
// showed after.
func (r *run) blockedTasks() string {
	before := len(readFile(r.dom.console))
	if out, _, err := r.dom.d.virsh(context.Background(), 20*time.Second, "send-key", r.dom.name, "KEY_LEFTALT", "KEY_SYSRQ", "KEY_W"); err != nil {
		return fmt.Sprintf("send-key: %v %s", err, out)
	}
	time.Sleep(3 * time.Second)
	con := readFile(r.dom.console)
	if len(con) < before {
		before = 0
	}
	shown := strings.TrimSpace(con[before:])
	if !strings.Contains(shown, "task:") {
		shown += "\n(no task blocked: the agent is not stuck in the kernel)"
	}
	return tail(shown, 120)
}

// recover resets a guest whose agent no longer answers (a guest left
// frozen by a hung freeze, an agent stuck for good), as an operator would,
// and waits for the agent.
func (r *run) recover(after string) {
	if r.lost {
		return
	}
	r.t.Logf("%s: the agent does not answer after %s: resetting the guest", r.dom.agent, after)
	boots := r.dom.boots()
	if out, _, err := r.dom.d.virsh(context.Background(), 30*time.Second, "reset", r.dom.name); err != nil {
		r.t.Errorf("%s: reset after %s: %v %s", r.dom.agent, after, err, out)
		r.lost = true
		return
	}
	if _, err := r.waitAgent(boots); err != nil {
		r.t.Errorf("%s: the agent did not answer after the reset that followed %s: %v", r.dom.agent, after, err)
		r.lost = true
	}
}

// waitAgent waits until the guest has booted more than boots times and its
// agent answers guest-ping through libvirt; it returns the time taken.
func (r *run) waitAgent(boots int) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(bootTimeout)
	var last string
	for {
		if r.dom.boots() > boots {
			out, _, err := r.dom.d.virsh(r.ctx, 15*time.Second, "qemu-agent-command", r.dom.name, `{"execute":"guest-ping"}`, "--timeout", "5")
			if err == nil {
				return time.Since(start), nil
			}
			last = out + " " + err.Error()
		} else {
			last = "the guest has not booted yet"
		}
		if time.Now().After(deadline) || r.ctx.Err() != nil {
			return time.Since(start), fmt.Errorf("no answer within %s: %s", time.Since(start).Round(time.Second), last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitFirstAnswer: the time from the domain's start to the first answered
// guest-ping.
func (r *run) waitFirstAnswer() {
	s := &step{name: "first guest-ping after start"}
	r.steps = append(r.steps, s)
	_, err := r.waitAgent(0)
	s.took = time.Since(r.dom.started)
	if err != nil {
		s.out = err.Error()
		r.lost = true
		r.t.Fatalf("%s: %v", r.dom.agent, err)
	}
	s.ok, s.shape, s.out = true, "ok", "answered"
	r.t.Logf("%s: first guest-ping answered %s after the domain started", r.dom.agent, s.took.Round(time.Millisecond))
}

// firstGuestInfo sends guest-info right after the first ping, as a user
// would, with libvirt's default timeout (5 s, the sync's too).
func (r *run) firstGuestInfo() {
	s := r.do("qemu-agent-command guest-info (first)", "qemu-agent-command", r.dom.name, `{"execute":"guest-info"}`)
	r.t.Logf("%s: first guest-info took %s: ok=%v", r.dom.agent, s.took.Round(time.Millisecond), s.ok)
	if !s.ok {
		r.fail(s, "guest-info right after the first ping failed: %s", s.out)
		// How long it takes when given the time.
		out, took, err := r.dom.d.virsh(r.ctx, 40*time.Second, "qemu-agent-command", r.dom.name, `{"execute":"guest-info"}`, "--timeout", "30")
		r.t.Logf("%s: guest-info again with 30 s: %s, err %v, %d bytes", r.dom.agent, took.Round(time.Millisecond), err, len(out))
		return
	}
	var info struct {
		Return struct {
			Version  string `json:"version"`
			Commands []struct {
				Name    string `json:"name"`
				Enabled bool   `json:"enabled"`
			} `json:"supported_commands"`
		} `json:"return"`
	}
	if err := json.Unmarshal([]byte(s.out), &info); err != nil || len(info.Return.Commands) == 0 {
		r.fail(s, "not a guest-info reply: %v %.200s", err, s.out)
		return
	}
	s.shape = "ok"
	s.out = fmt.Sprintf("version %s, %d commands", info.Return.Version, len(info.Return.Commands))
}

// fields turns virsh's "key : value" lines into a map.
func fields(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

var digits = regexp.MustCompile(`\.[0-9]+\.`)

// guestinfo: every group libvirt asks for. The shape is the set of keys
// (user.0.name and user.1.name are one key) with the counts and the values
// that do not depend on the agent.
func (r *run) guestinfo() {
	r.check("guestinfo", func(s *step) {
		f := fields(s.out)
		keys := map[string]bool{}
		for k := range f {
			keys[digits.ReplaceAllString(k, ".N.")] = true
		}
		var ks []string
		for k := range keys {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		var vals []string
		for _, k := range []string{"hostname", "os.id", "os.version-id", "fs.count", "disk.count", "user.count", "timezone.name"} {
			vals = append(vals, k+"="+f[k])
		}
		s.shape = strings.Join(vals, " ") + "\nkeys: " + strings.Join(ks, " ")
		if f["hostname"] != "ga-guest" {
			r.fail(s, "hostname %q, want ga-guest", f["hostname"])
		}
	}, "guestinfo", r.dom.name)
}

// rows are virsh's table rows (below the header's dashes), fields joined by
// single spaces, sorted.
func rows(out string) []string {
	lines := strings.Split(out, "\n")
	for i, line := range lines {
		if strings.HasPrefix(line, "---") {
			lines = lines[i+1:]
			break
		}
	}
	var rs []string
	for _, line := range lines {
		if f := strings.Fields(line); len(f) > 0 {
			rs = append(rs, strings.Join(f, " "))
		}
	}
	sort.Strings(rs)
	return rs
}

func (r *run) domfsinfo() {
	r.check("domfsinfo", func(s *step) {
		rs := rows(s.out)
		s.shape = fmt.Sprintf("%d filesystems: %s", len(rs), strings.Join(rs, "; "))
		if len(rs) != 1 || !strings.HasPrefix(rs[0], "/var/lib/guest-agent vda ext4") {
			r.fail(s, "want the state disk alone (/var/lib/guest-agent vda ext4), got %q", rs)
		}
	}, "domfsinfo", r.dom.name)
}

func (r *run) domifaddr() {
	r.check("domifaddr --source agent", func(s *step) {
		rs := rows(s.out)
		s.shape = strings.Join(rs, "; ")
		if !strings.Contains(s.out, "10.0.2.15/24") || !strings.Contains(s.out, "127.0.0.1/8") {
			r.fail(s, "want lo 127.0.0.1/8 and eth0 10.0.2.15/24, got %q", rs)
		}
	}, "domifaddr", r.dom.name, "--source", "agent")
}

// domtime: the guest's clock (from the RTC) is the host's, give or take.
func (r *run) domtime(name string) *step {
	return r.check(name, func(s *step) {
		s.shape = "ok"
		f := fields(s.out)
		sec, err := strconv.ParseInt(f["Time"], 10, 64)
		if err != nil {
			r.fail(s, "no time in %q", s.out)
			return
		}
		if d := time.Since(time.Unix(sec, 0)); d > time.Minute || d < -time.Minute {
			r.fail(s, "guest time %d is %s off the host's", sec, d)
		}
	}, "domtime", r.dom.name)
}

// agentCall sends one command through virsh qemu-agent-command and
// returns its "return" member.
func (r *run) agentCall(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	out, _, err := r.virsh("qemu-agent-command", r.dom.name, string(b), "--timeout", "10")
	if err != nil {
		return nil, err
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal([]byte(out), &reply); err != nil {
		return nil, fmt.Errorf("%s: %v: %q", cmd, err, out)
	}
	return reply.Return, nil
}

// readGuestFile reads a small file of the guest through the agent.
func (r *run) readGuestFile(path string) (string, error) {
	ret, err := r.agentCall("guest-file-open", map[string]any{"path": path, "mode": "r"})
	if err != nil {
		return "", err
	}
	var h int
	if err := json.Unmarshal(ret, &h); err != nil {
		return "", err
	}
	defer func() { _, _ = r.agentCall("guest-file-close", map[string]any{"handle": h}) }()
	ret, err = r.agentCall("guest-file-read", map[string]any{"handle": h, "count": 65536})
	if err != nil {
		return "", err
	}
	var rd struct {
		Buf string `json:"buf-b64"`
	}
	if err := json.Unmarshal(ret, &rd); err != nil {
		return "", err
	}
	b, err := base64.StdEncoding.DecodeString(rd.Buf)
	return string(b), err
}

func shadowHash(shadow string) string {
	for _, line := range strings.Split(shadow, "\n") {
		if f := strings.Split(line, ":"); len(f) > 2 && f[0] == guestUser {
			return f[1]
		}
	}
	return ""
}

// setUserPassword: the password reaches /etc/shadow (through chpasswd).
func (r *run) setUserPassword() {
	r.check("set-user-password", func(s *step) {
		s.shape = "ok"
		shadow, err := r.readGuestFile("/etc/shadow")
		if err != nil {
			r.fail(s, "reading /etc/shadow back: %v", err)
			return
		}
		if h := shadowHash(shadow); !strings.HasPrefix(h, "$") {
			r.fail(s, "%s's password in /etc/shadow is %q after set-user-password", guestUser, h)
		}
	}, "set-user-password", r.dom.name, guestUser, "Secret-42")
}

const sshKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbZ2c5m5Wbbbh0m2hWdRz7Wd0Rbf1ym1Fhnd3xL8bqS libvirt-test"

// sshKeys: a key added, listed and removed again.
func (r *run) sshKeys() {
	keyFile := harness.ShortTempDir(r.t) + "/key.pub"
	if err := os.WriteFile(keyFile, []byte(sshKey+"\n"), 0o644); err != nil {
		r.t.Fatal(err)
	}
	r.check("set-user-sshkeys", func(s *step) { s.shape = "ok" }, "set-user-sshkeys", r.dom.name, guestUser, "--file", keyFile)
	r.check("get-user-sshkeys", func(s *step) {
		s.shape = s.out
		if s.out != sshKey {
			r.fail(s, "want the key just added, got %q", s.out)
		}
		if keys, err := r.readGuestFile("/home/" + guestUser + "/.ssh/authorized_keys"); err != nil || !strings.Contains(keys, sshKey) {
			r.fail(s, "authorized_keys in the guest: %q %v", keys, err)
		}
	}, "get-user-sshkeys", r.dom.name, guestUser)
	r.check("set-user-sshkeys --remove", func(s *step) { s.shape = "ok" }, "set-user-sshkeys", r.dom.name, guestUser, "--remove", "--file", keyFile)
	r.check("get-user-sshkeys after --remove", func(s *step) {
		s.shape = s.out
		if s.out != "" {
			r.fail(s, "the key is still there: %q", s.out)
		}
	}, "get-user-sshkeys", r.dom.name, guestUser)
}

// freezeStatus is guest-fsfreeze-status through libvirt.
func (r *run) freezeStatus() string {
	ret, err := r.agentCall("guest-fsfreeze-status", nil)
	if err != nil {
		return err.Error()
	}
	var st string
	_ = json.Unmarshal(ret, &st)
	return st
}

// freezeThaw: domfsfreeze (with the extra arguments) freezes the state
// disk, the one freezable filesystem of the guest, and domfsthaw thaws it.
// The thaw is sent whatever the freeze gave: a freeze whose answer was lost
// may still have frozen the guest.
func (r *run) freezeThaw(extra ...string) {
	name := strings.TrimSpace("domfsfreeze " + strings.Join(extra, " "))
	args := append([]string{"domfsfreeze", r.dom.name}, extra...)
	r.check(name, func(s *step) {
		s.shape = s.out
		if s.out != "Froze 1 filesystem(s)" {
			r.fail(s, "want Froze 1 filesystem(s)")
		}
		if st := r.freezeStatus(); st != "frozen" {
			r.fail(s, "guest-fsfreeze-status after the freeze: %s", st)
		}
	}, args...)
	if len(extra) > 0 {
		// libvirt refuses mountpoints on a thaw before asking the agent.
		s := r.do("domfsthaw "+strings.Join(extra, " "), append([]string{"domfsthaw", r.dom.name}, extra...)...)
		s.shape = fmt.Sprintf("ok=%v", s.ok)
	}
	r.check("domfsthaw (after "+name+")", func(s *step) {
		s.shape = s.out
		if s.out != "Thawed 1 filesystem(s)" {
			r.fail(s, "want Thawed 1 filesystem(s)")
		}
		if st := r.freezeStatus(); st != "thawed" {
			r.fail(s, "guest-fsfreeze-status after the thaw: %s", st)
		}
	}, "domfsthaw", r.dom.name)
}

// resetWhileFrozen: a guest reset while frozen (a host that lost patience,
// a crash) comes back thawed, and the agent does not claim otherwise: a
// frozen flag must not survive a reboot.
func (r *run) resetWhileFrozen() {
	r.check("domfsfreeze (before reset)", func(s *step) { s.shape = s.out }, "domfsfreeze", r.dom.name)
	boots := r.dom.boots()
	r.check("reset while frozen", func(s *step) {
		s.shape = "ok"
		took, err := r.waitAgent(boots)
		if err != nil {
			r.fail(s, "the agent did not answer after the reset: %v", err)
			r.lost = true
			return
		}
		r.t.Logf("%s: agent answered %s after the reset", r.dom.agent, took.Round(time.Millisecond))
	}, "reset", r.dom.name)
	r.domtime("domtime after reset while frozen")
	s := &step{name: "guest-fsfreeze-status after reset", ok: true}
	r.steps = append(r.steps, s)
	s.out = r.freezeStatus()
	s.shape = s.out
	if s.out != "thawed" {
		r.fail(s, "want thawed after a reset")
	}
}

// reboot --mode agent: the guest reboots, the agent answers again and is
// not frozen.
func (r *run) reboot() {
	boots := r.dom.boots()
	r.check("reboot --mode agent", func(s *step) {
		s.shape = "ok"
		took, err := r.waitAgent(boots)
		if err != nil {
			r.fail(s, "the agent did not answer after the reboot: %v", err)
			r.lost = true
			return
		}
		r.t.Logf("%s: agent answered %s after reboot --mode agent", r.dom.agent, took.Round(time.Millisecond))
	}, "reboot", r.dom.name, "--mode", "agent")
	r.domtime("domtime after reboot")
}

// shutdown --mode agent: the guest powers off and the domain goes.
func (r *run) shutdown() {
	r.check("shutdown --mode agent", func(s *step) {
		s.shape = "ok"
		deadline := time.Now().Add(60 * time.Second)
		for {
			out, _, err := r.virsh("domstate", r.dom.name)
			if err != nil || strings.Contains(out, "shut off") {
				r.t.Logf("%s: domain gone %s after shutdown --mode agent", r.dom.agent, time.Since(deadline.Add(-60*time.Second)).Round(time.Millisecond))
				return
			}
			if time.Now().After(deadline) {
				r.fail(s, "the domain is still %q 60 s after shutdown --mode agent", out)
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}, "shutdown", r.dom.name, "--mode", "agent")
}

// compare checks guest-agent's steps against qemu-ga's (same success, same
// shape) and prints the table of both.
func compare(t *testing.T, ref, ga *run) {
	if ref == nil || ga == nil {
		return
	}
	byName := map[string]*step{}
	for _, s := range ga.steps {
		byName[s.name] = s
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%-42s | %-48s | %s\n", "step", "qemu-ga", "guest-agent")
	for _, rs := range ref.steps {
		gs := byName[rs.name]
		if gs == nil {
			gs = &step{out: "not run"}
		}
		fmt.Fprintf(&table, "%-42s | %-48s | %s\n", rs.name, summary(rs), summary(gs))
		if gs.ok != rs.ok {
			t.Errorf("%s: guest-agent ok=%v (%s), qemu-ga ok=%v (%s)", rs.name, gs.ok, gs.out, rs.ok, rs.out)
		} else if gs.shape != rs.shape {
			t.Errorf("%s: guest-agent gives\n%s\nqemu-ga gives\n%s", rs.name, gs.shape, rs.shape)
		}
	}
	t.Logf("virsh steps, qemu-ga against guest-agent in the same guest:\n%s", table.String())
}

// summary is one table cell: what was compared, or what virsh said.
func summary(s *step) string {
	out := s.out
	if s.ok && s.shape != "" && s.shape != "ok" {
		out, _, _ = strings.Cut(s.shape, "\n")
	}
	out = strings.ReplaceAll(out, "\n", "; ")
	if len(out) > 90 {
		out = out[:90] + "…"
	}
	res := "ok"
	if !s.ok {
		res = "FAIL"
	}
	if s.hung {
		res = "NO ANSWER"
		if s.note == "hung" {
			res = "HUNG"
		}
	}
	if s.note != "" && s.ok {
		res = "WRONG"
	}
	return fmt.Sprintf("%s %s (%s)", res, out, s.took.Round(time.Millisecond))
}

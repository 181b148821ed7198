package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// Tests of issue 9: what a hostile host or guest user can do to the agent,
// each over the real agent.

// cpuTime is the user+system CPU time pid has used so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// A request made of escapes is scanned in time linear in its size: 8 MiB of
// "\\" took the parser about a minute of CPU when each escape rescanned the
// rest of the buffer (qemu-ga: 0.18 s for 4 MiB). One parser serves every
// channel, so that was a guest user stalling the host's pings.
func TestEscapesCostLinearTime(t *testing.T) {
	a := startAgent(t)
	parser := onePluginProc(t, a.Cmd.Process.Pid, "parser-json")
	c := harness.MustDial(t, a.Socket)
	before := cpuTime(t, parser)
	req := `{"execute":"guest-ping","arguments":{"x":"` + strings.Repeat(`\\`, 4<<20) + `"}}` + "\n"
	line := callWithin(t, c, req, 20*time.Second)
	expectError(t, line, "GenericError", "Parameter 'x' is unexpected")
	used := cpuTime(t, parser) - before
	t.Logf("parser CPU for an 8 MiB request of escapes: %s", used)
	if used > 2*time.Second {
		t.Fatalf("the parser spent %s on 8 MiB of escapes: not linear", used)
	}
}

// max_sessions holds on a channel whose listening socket the exchange
// handed to the parser (the default for unix-listen): 10 connections, 4
// served, the others closed; a slot freed is taken again.
func TestMaxSessionsOnHandedOverListener(t *testing.T) {
	a, sock := startAgentConfig(t, `limits { max_sessions = 4 }`)
	var served, refused int
	var conns []*harness.Conn
	for i := 0; i < 10; i++ {
		c := harness.MustDial(t, sock)
		conns = append(conns, c)
		if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
			t.Fatal(err)
		}
		line, err := c.Call(`{"execute":"guest-ping"}` + "\n")
		if err == nil && strings.Contains(line, `"return"`) {
			served++
		} else {
			refused++
		}
	}
	if served != 4 || refused != 6 {
		t.Fatalf("served %d and refused %d of 10 sessions with max_sessions = 4\n%s", served, refused, a.Log.String())
	}
	waitLog(t, a, "connections refused: session limit reached", "the refusals are not logged")
	conns[0].Close()
	time.Sleep(200 * time.Millisecond)
	c := harness.MustDial(t, sock)
	call(t, c, `{"execute":"guest-ping"}`+"\n")
}

// An accept that fails for want of descriptors does not stop the channel:
// once the connections holding them close, the channel answers again.
func TestAcceptOutOfDescriptorsRecovers(t *testing.T) {
	a, sock := startAgentConfig(t, `limits { max_sessions = 1000 }`)
	parser := onePluginProc(t, a.Cmd.Process.Pid, "parser-json")
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", parser))
	if err != nil {
		t.Fatal(err)
	}
	limit := len(fds) + 8
	if out, err := exec.Command("prlimit", "--pid", strconv.Itoa(parser), fmt.Sprintf("--nofile=%d:%d", limit, limit)).CombinedOutput(); err != nil {
		t.Fatalf("prlimit (util-linux): %v: %s", err, out)
	}
	var conns []*harness.Conn
	for i := 0; i < 30; i++ {
		c, err := harness.Dial(sock)
		if err != nil {
			break // the backlog is full too
		}
		conns = append(conns, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(a.Log.String(), "too many open files") {
		if time.Now().After(deadline) {
			t.Fatalf("the parser never ran out of descriptors (limit %d, %d connections)", limit, len(conns))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range conns {
		c.Close()
	}
	c := harness.MustDial(t, sock)
	line := callWithin(t, c, `{"execute":"guest-ping"}`+"\n", 10*time.Second)
	if !strings.Contains(line, `"return"`) {
		t.Fatalf("after the descriptors came back: %q", line)
	}
	if strings.Contains(a.Log.String(), "channel stopped") {
		t.Fatal("the channel was stopped")
	}
}

// An id is any JSON value; whitespace inside it must not cut the reply line
// (qemu-ga re-serialises it), and execute must be a string, null included,
// answered at once.
func TestEnvelopeEdgesOverTheAgent(t *testing.T) {
	a := startAgent(t)
	c := harness.MustDial(t, a.Socket)
	line := call(t, c, "{\"execute\":\"guest-ping\",\"id\":[1,\n2, {\"a\" :  \"b\"}]}\n")
	if line != `{"return": {}, "id": [1, 2, {"a": "b"}]}`+"\n" {
		t.Fatalf("reply to an id with newlines: %q", line)
	}
	expectError(t, callWithin(t, c, `{"execute": null}`+"\n", 2*time.Second), "GenericError", "QMP input member 'execute' must be a string")
}

// Parser restarts leave nothing behind in the supervisor: no descriptors,
// no broker sockets outside the runtime directory, no stale sockets in it.
func TestParserRestartsLeakNothing(t *testing.T) {
	a := startAgent(t)
	sup := a.Cmd.Process.Pid
	countFDs := func() int {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", sup))
		if err != nil {
			t.Fatal(err)
		}
		return len(fds)
	}
	sockets := func() []string {
		var out []string
		_ = filepath.Walk(a.RuntimeDir, func(p string, info os.FileInfo, err error) error {
			if err == nil && info.Mode()&os.ModeSocket != 0 {
				out = append(out, p)
			}
			return nil
		})
		return out
	}
	before, socksBefore := countFDs(), len(sockets())
	for i := 0; i < 6; i++ {
		killAndReap(t, onePluginProc(t, sup, "parser-json"))
		harness.WaitForPing(t, a.Socket, 10*time.Second)
	}
	time.Sleep(300 * time.Millisecond)
	after, socksAfter := countFDs(), len(sockets())
	t.Logf("supervisor descriptors %d -> %d, runtime sockets %d -> %d", before, after, socksBefore, socksAfter)
	if after > before+2 {
		t.Errorf("the supervisor holds %d more descriptors after 6 parser restarts", after-before)
	}
	if socksAfter > socksBefore {
		t.Errorf("%d more sockets in the runtime directory after 6 parser restarts: %v", socksAfter-socksBefore, sockets())
	}
	for _, p := range boundSockets(t, sup) {
		if !strings.HasPrefix(p, a.RuntimeDir+"/") {
			t.Errorf("the supervisor has a socket outside the runtime directory: %s", p)
		}
	}
}

// boundSockets lists the paths of the unix sockets pid holds open.
func boundSockets(t *testing.T, pid int) []string {
	t.Helper()
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.Trim(link[len("socket:"):], "[]")] = true
		}
	}
	table, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 8 && inodes[f[6]] {
			out = append(out, f[7])
		}
	}
	return out
}

// The peer's credentials (SO_PEERCRED) reach the command plugin with every
// request, on a listener the parser serves itself: what a policy on local
// callers needs.
func TestPeerIdentityReachesPlugins(t *testing.T) {
	a := startAgent(t)
	c := harness.MustDial(t, a.Socket)
	var caller struct {
		Channel string `json:"channel"`
		Dialect string `json:"dialect"`
		PID     int    `json:"peer-pid"`
		UID     int    `json:"peer-uid"`
		GID     int    `json:"peer-gid"`
	}
	decodeReturn(t, call(t, c, `{"execute":"test-caller"}`+"\n"), &caller)
	if caller.Channel != "qga" || caller.Dialect != "qga" || caller.PID != os.Getpid() || caller.UID != os.Getuid() || caller.GID != os.Getgid() {
		t.Fatalf("the plugin saw caller %+v; want channel qga, pid %d, uid %d, gid %d", caller, os.Getpid(), os.Getuid(), os.Getgid())
	}
}

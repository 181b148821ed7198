package policy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testResolver knows a few users and groups, so the rules are checked
// without depending on the machine's /etc/passwd.
var testResolver = Resolver{
	User: func(name string) (int32, error) {
		switch name {
		case "root":
			return 0, nil
		case "alice":
			return 1000, nil
		case "bob":
			return 1001, nil
		}
		return 0, fmt.Errorf("unknown user %s", name)
	},
	Group: func(name string) (int32, error) {
		switch name {
		case "root":
			return 0, nil
		case "backup":
			return 34, nil
		case "adm":
			return 4, nil
		}
		return 0, fmt.Errorf("unknown group %s", name)
	},
}

var (
	root     = Identity{PID: 1, UID: 0, GID: 0}
	alice    = Identity{PID: 2, UID: 1000, GID: 1000}
	bob      = Identity{PID: 3, UID: 1001, GID: 1001, Groups: []int32{1001, 34}} // in backup
	operator = Identity{PID: 4, UID: 1002, GID: 34}                              // primary group backup
	nobody   = Identity{PID: 5, UID: 65534, GID: 65534}
)

func TestAllows(t *testing.T) {
	p, err := Parse(map[string][]string{
		"guest-get-osinfo":      {"*"},
		"guest-fsfreeze-freeze": {"root", "@backup"},
		"guest-exec":            {"alice", "1001"},
		"guest-file-open":       {"@4"},
	}, testResolver)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		command string
		who     Identity
		want    bool
	}{
		{"guest-get-osinfo", nobody, true},
		{"guest-get-osinfo", Unknown, true}, // "*" is anyone, also an unknown caller
		{"guest-fsfreeze-freeze", root, true},
		{"guest-fsfreeze-freeze", bob, true},      // supplementary group
		{"guest-fsfreeze-freeze", operator, true}, // primary group
		{"guest-fsfreeze-freeze", alice, false},
		{"guest-fsfreeze-freeze", Unknown, false},
		{"guest-exec", alice, true},
		{"guest-exec", bob, true}, // by uid
		{"guest-exec", root, false},
		{"guest-file-open", Identity{UID: 7, GID: 7, Groups: []int32{4}}, true},
		{"guest-file-open", Identity{UID: 4, GID: 7}, false}, // @4 is a gid, not a uid
		{"guest-ping", root, false},                          // not listed: nobody
		{"guest-ping", Unknown, false},
	}
	for _, c := range cases {
		if got := p.Allows(c.command, c.who); got != c.want {
			t.Errorf("Allows(%s, %s) = %v, want %v", c.command, c.who, got, c.want)
		}
	}
}

func TestAnyCommandAddsUp(t *testing.T) {
	p, err := Parse(map[string][]string{"*": {"root"}, "guest-ping": {"alice"}}, testResolver)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Allows("guest-ping", root) || !p.Allows("guest-exec", root) {
		t.Error("the \"*\" entry does not cover every command")
	}
	if !p.Allows("guest-ping", alice) || p.Allows("guest-exec", alice) {
		t.Error("a command's entry must add to \"*\", for that command only")
	}
}

func TestDefaultRules(t *testing.T) {
	p, err := Parse(DefaultRules(), Resolver{}) // the real root user of this machine
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ReadOnlyCommands {
		if !p.Allows(c, nobody) || !p.Allows(c, root) {
			t.Errorf("default: %s must be open to anyone", c)
		}
	}
	for _, c := range []string{"guest-exec", "guest-file-open", "guest-fsfreeze-freeze", "guest-shutdown", "guest-set-user-password", "guest-get-users"} {
		if p.Allows(c, nobody) || p.Allows(c, alice) {
			t.Errorf("default: %s must be refused to others than root", c)
		}
		if !p.Allows(c, root) {
			t.Errorf("default: root must be allowed %s", c)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, rules := range []map[string][]string{
		{"guest-ping": {"mallory"}},
		{"guest-ping": {"@nogroup-here"}},
		{"guest-ping": {""}},
		{"guest-ping": {"@"}},
		{"": {"root"}},
		{"guest-ping": {"99999999999"}},
	} {
		if _, err := Parse(rules, testResolver); err == nil {
			t.Errorf("Parse(%v) succeeded", rules)
		}
	}
	// Every problem is reported at once, each naming its command.
	_, err := Parse(map[string][]string{"a": {"mallory"}, "b": {"@nope"}}, testResolver)
	if err == nil || !strings.Contains(err.Error(), `allow "a": user "mallory"`) || !strings.Contains(err.Error(), `allow "b": group "nope"`) {
		t.Errorf("errors: %v", err)
	}
	var nilPolicy *Policy
	if nilPolicy.Allows("guest-ping", root) {
		t.Error("a nil policy allows")
	}
}

func TestRulesRoundTrip(t *testing.T) {
	in := map[string][]string{"guest-ping": {"*"}, "*": {"root", "@adm"}}
	p, err := Parse(in, testResolver)
	if err != nil {
		t.Fatal(err)
	}
	out := p.Rules()
	if len(out) != 2 || !slices.Equal(out["*"], in["*"]) || !slices.Equal(out["guest-ping"], in["guest-ping"]) {
		t.Errorf("Rules() = %v", out)
	}
}

// childEnv makes the test binary a client that connects to the abstract
// socket it names and waits for EOF (TestMain).
const childEnv = "POLICY_TEST_CONNECT"

func TestMain(m *testing.M) {
	if addr := os.Getenv(childEnv); addr != "" {
		c, err := net.Dial("unix", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		_, _ = io.Copy(io.Discard, c)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestPeerIdentity connects from a real process running as another user with
// supplementary groups and reads its identity from the accepted socket.
func TestPeerIdentity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	// An abstract socket: no filesystem permission stands in the way.
	addr := fmt.Sprintf("@guest-agent-policy-test-%d", os.Getpid())
	ln, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(copyForOthers(t), "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65533, Groups: []uint32{34, 4}}}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	ln.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	id, err := PeerIdentity(conn.(*net.UnixConn))
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	if id.UID != 65534 || id.GID != 65533 || id.PID != int32(cmd.Process.Pid) {
		t.Errorf("identity %+v, want uid 65534 gid 65533 pid %d", id, cmd.Process.Pid)
	}
	if !slices.Contains(id.Groups, 34) || !slices.Contains(id.Groups, 4) {
		t.Errorf("supplementary groups %v, want 34 and 4", id.Groups)
	}
	p, err := Parse(map[string][]string{"guest-fsfreeze-freeze": {"@backup"}}, testResolver)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Allows("guest-fsfreeze-freeze", id) {
		t.Error("a member of backup by supplementary group is refused")
	}
}

func TestPeerIdentityNotASocket(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, err := PeerIdentity(f)
	if err == nil || !errors.Is(err, syscall.ENOTSOCK) {
		t.Errorf("PeerIdentity(/dev/null) = %v, %v", id, err)
	}
	if id.UID != -1 {
		t.Errorf("identity of a failure: %v", id)
	}
}

// copyForOthers copies the test binary where another user may run it (go
// test builds it in a directory only its owner can enter).
func copyForOthers(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "policy-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := dir + "/policy.test"
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

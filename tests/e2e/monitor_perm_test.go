package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// Real unprivileged users call the command monitor with guest-agent call,
// run under setpriv with their own uid, gid and groups: the socket's mode
// and group decide who may connect, the channel's policy who may call
// what, by user and by group, and every refusal is logged with the
// caller's identity.

// testUser is a user made for one test (useradd), removed afterwards.
type testUser struct {
	name     string
	uid, gid int
}

func addGroup(t *testing.T, name string) int {
	t.Helper()
	_ = exec.Command("groupdel", name).Run() // left by a killed run
	if out, err := exec.Command("groupadd", name).CombinedOutput(); err != nil {
		t.Fatalf("groupadd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("groupdel", name).Run() })
	return groupID(t, name)
}

func addUser(t *testing.T, name string, groups ...string) testUser {
	t.Helper()
	_ = exec.Command("userdel", name).Run()
	args := []string{"--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"}
	if len(groups) > 0 {
		args = append(args, "--groups", strings.Join(groups, ","))
	}
	if out, err := exec.Command("useradd", append(args, name)...).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("userdel", name).Run(); _ = exec.Command("groupdel", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return testUser{name: name, uid: uid, gid: gid}
}

// callAs runs `guest-agent call --raw` as u (or as root when u is nil):
// the in-guest client, whose --raw prints the reply as the agent sent it.
func callAs(t *testing.T, u *testUser, socket, command string) (reply monitorReply, stderr string, err error) {
	t.Helper()
	args := []string{filepath.Join(harness.BinDir(t), "guest-agent"), "-c", "/nonexistent.hcl", "call", "--raw", "--timeout", "20s", "--socket", socket, command}
	if u != nil {
		args = append([]string{"setpriv", "--reuid", u.name, "--regid", strconv.Itoa(u.gid), "--init-groups", "--"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if err == nil {
		reply = decodeMonitorReply(t, []byte(command), bytes.TrimSpace(out.Bytes()))
	}
	return reply, errOut.String(), err
}

func requireUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: useradd, and setpriv to run as the users")
	}
	for _, tool := range []string{"useradd", "groupadd", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (scripts/test-deps.sh installs it): %v", tool, err)
		}
	}
}

func TestMonitorPermissions(t *testing.T) {
	requireUsers(t)
	addGroup(t, "gamon-callers")
	addGroup(t, "gamon-backup")
	alice := addUser(t, "gamon-alice", "gamon-callers")             // by user name
	bob := addUser(t, "gamon-bob", "gamon-callers", "gamon-backup") // by supplementary group
	mallory := addUser(t, "gamon-mallory")                          // not in the socket's group
	a, _, mon := startMonitorAgent(t, `socket_group = "gamon-callers"
  allow = {
    "*"           = ["root"]
    "guest-ping"  = ["*"]
    "guest-info"  = ["*"]
    "test-pid"    = ["gamon-alice"]
    "test-caller" = ["@gamon-backup"]
  }`)
	// The harness's directory is root's alone; the socket's own (created
	// 0711) is where the test is.
	if err := os.Chmod(filepath.Dir(filepath.Dir(mon)), 0o711); err != nil {
		t.Fatal(err)
	}
	st := statSocket(t, mon)
	if st.mode != 0o770 || st.gid != groupID(t, "gamon-callers") {
		t.Fatalf("socket mode %#o gid %d, want 0770 gamon-callers", st.mode, st.gid)
	}

	// The socket's mode and group: mallory cannot even connect.
	if _, stderr, err := callAs(t, &mallory, mon, "guest-ping"); err == nil || !strings.Contains(stderr, "permission denied") {
		t.Errorf("mallory, outside the socket's group: %v %q, want permission denied", err, stderr)
	}

	// guest-ping is anyone's; test-pid alice's by name; test-caller the
	// backup group's, which bob has as a supplementary group.
	for _, c := range []struct {
		who     *testUser
		command string
		allowed bool
	}{
		{&alice, "guest-ping", true}, {&bob, "guest-ping", true},
		{&alice, "test-pid", true}, {&bob, "test-pid", false},
		{&alice, "test-caller", false}, {&bob, "test-caller", true},
		{&alice, "guest-exec", false}, {&bob, "guest-get-osinfo", false},
		{nil, "test-pid", true}, {nil, "test-caller", true},
	} {
		name := "root"
		if c.who != nil {
			name = c.who.name
		}
		r, stderr, err := callAs(t, c.who, mon, c.command)
		if err != nil {
			t.Fatalf("%s %s: %v %s", name, c.command, err, stderr)
		}
		if c.allowed && r.Status != 0 {
			t.Errorf("%s may call %s: %s", name, c.command, r.Raw)
		}
		if !c.allowed {
			want := fmt.Sprintf("Permission denied: uid %d gid %d pid ", c.who.uid, c.who.gid)
			if r.Status != 105 || !strings.HasPrefix(r.StatusMessage, want) || !strings.Contains(r.StatusMessage, "may not call "+c.command+" on channel monitor") {
				t.Errorf("%s %s: %s, want Status 105 %q...", name, c.command, r.Raw, want)
			}
		}
	}

	// The command sees its caller as the kernel named it.
	r, _, err := callAs(t, &bob, mon, "test-caller")
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Members["peer-uid"]) != strconv.Itoa(bob.uid) || string(r.Members["dialect"]) != `"monitor"` {
		t.Errorf("test-caller as bob: %s", r.Raw)
	}

	// guest-info tells each caller what it may call.
	r, _, err = callAs(t, &alice, mon, "guest-info")
	if err != nil {
		t.Fatal(err)
	}
	var cmds []struct {
		Name    string `json:"name"`
		Enabled bool   `json:"enabled"`
	}
	if err := json.Unmarshal(r.Members["supported_commands"], &cmds); err != nil {
		t.Fatalf("guest-info: %s", r.Raw)
	}
	enabled := map[string]bool{}
	for _, c := range cmds {
		enabled[c.Name] = c.Enabled
	}
	if !enabled["test-pid"] || enabled["test-caller"] || enabled["guest-exec"] || !enabled["guest-ping"] {
		t.Errorf("guest-info as alice: %v", enabled)
	}

	// The refusals are in the log with the caller's identity.
	for _, refused := range []struct {
		who     testUser
		command string
	}{{alice, "test-caller"}, {alice, "guest-exec"}, {bob, "test-pid"}} {
		if !logged(a, "command refused by the channel's policy", " channel=monitor ", " command="+refused.command+" ",
			fmt.Sprintf(" uid=%d ", refused.who.uid), fmt.Sprintf(" gid=%d ", refused.who.gid), " pid=") {
			t.Errorf("%s's refused %s is not logged with the caller's identity:\n%s", refused.who.name, refused.command, a.Log.String())
		}
	}
}

// Without allow, the monitor's default: anyone reads harmless facts, root
// calls everything; guest-agent call exits non-zero with the message.
func TestMonitorDefaultPolicy(t *testing.T) {
	requireUsers(t)
	carol := addUser(t, "gamon-carol")
	_, _, mon := startMonitorAgent(t, `socket_mode = "0777"`)
	if err := os.Chmod(filepath.Dir(filepath.Dir(mon)), 0o711); err != nil {
		t.Fatal(err)
	}
	for _, command := range []string{"guest-ping", "guest-info", "guest-get-osinfo", "guest-get-host-name", "guest-get-timezone", "guest-network-get-interfaces"} {
		r, stderr, err := callAs(t, &carol, mon, command)
		if err != nil || r.Status != 0 {
			t.Errorf("carol %s: %s %v %s", command, r.Raw, err, stderr)
		}
	}
	for _, command := range []string{"test-pid", "guest-get-users", "guest-exec", "guest-file-open"} {
		r, _, err := callAs(t, &carol, mon, command)
		if err != nil || r.Status != 105 || !strings.HasPrefix(r.StatusMessage, "Permission denied") {
			t.Errorf("carol %s: %s %v", command, r.Raw, err)
		}
		if r, _, err := callAs(t, nil, mon, command); err != nil || r.Status == 105 && strings.HasPrefix(r.StatusMessage, "Permission denied") {
			t.Errorf("root %s refused: %s %v", command, r.Raw, err)
		}
	}

	// guest-agent call as a script sees it: the result on stdout, exit 0;
	// the StatusMessage on stderr, exit 1.
	bin := filepath.Join(harness.BinDir(t), "guest-agent")
	out, err := exec.Command("setpriv", "--reuid", carol.name, "--regid", strconv.Itoa(carol.gid), "--init-groups", "--",
		bin, "-c", "/nonexistent.hcl", "call", "--socket", mon, "guest-get-osinfo").Output()
	if err != nil || !strings.Contains(string(out), `"id"`) || strings.Contains(string(out), "Status") {
		t.Errorf("call guest-get-osinfo: %q %v", out, err)
	}
	cmd := exec.Command("setpriv", "--reuid", carol.name, "--regid", strconv.Itoa(carol.gid), "--init-groups", "--",
		bin, "-c", "/nonexistent.hcl", "call", "--socket", mon, "test-pid")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err = cmd.Output()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || len(out) != 0 ||
		!strings.Contains(stderr.String(), "test-pid: Permission denied: uid "+strconv.Itoa(carol.uid)) || !strings.Contains(stderr.String(), "(Status 105)") {
		t.Errorf("call test-pid as carol: exit %v, stdout %q, stderr %q", err, out, stderr.String())
	}
}

// logged tells whether one line of the agent's log holds every part (the
// fields of a plugin's line come in any order), waiting a moment: plugin
// lines reach the supervisor's log through go-plugin.
func logged(a *harness.Agent, parts ...string) bool {
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, line := range strings.Split(a.Log.String(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return true
			}
		}
	}
	return false
}

// The policy on a channel block of the monitor dialect whose exchange keeps
// its accept loop (hand_over_listener = false): the supplementary groups
// come with the session from the exchange.
func TestMonitorPolicyExchangeAccept(t *testing.T) {
	requireUsers(t)
	addGroup(t, "gamon-backup")
	alice := addUser(t, "gamon-alice")
	bob := addUser(t, "gamon-bob", "gamon-backup")
	dir := harness.ShortTempDir(t)
	qga, mon := filepath.Join(dir, "qga.sock"), filepath.Join(dir, "local", "commands.sock")
	harness.StartAgent(t, harness.Options{PluginDir: pluginDir, Config: fmt.Sprintf(`
channel "qga" {
  method  = "unix-listen"
  path    = %q
  dialect = "qga"
}
channel "local" {
  method  = "unix-listen"
  path    = %q
  dialect = "monitor"
  allow   = { "guest-ping" = ["*"], "test-caller" = ["@gamon-backup"] }
  options = { socket_mode = "0777", hand_over_listener = false }
}
`, qga, mon)})
	harness.WaitForPing(t, qga, 10*time.Second)
	waitMonitor(t, mon)
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	if r, stderr, err := callAs(t, &bob, mon, "test-caller"); err != nil || r.Status != 0 || string(r.Members["peer-uid"]) != strconv.Itoa(bob.uid) {
		t.Errorf("bob, in gamon-backup by a supplementary group: %s %v %s", r.Raw, err, stderr)
	}
	if r, _, err := callAs(t, &alice, mon, "test-caller"); err != nil || r.Status != 105 {
		t.Errorf("alice: %s %v", r.Raw, err)
	}
	if r, _, err := callAs(t, &alice, mon, "guest-ping"); err != nil || r.Status != 0 {
		t.Errorf("alice guest-ping: %s %v", r.Raw, err)
	}
}

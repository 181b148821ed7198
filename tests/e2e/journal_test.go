package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// journalAgent is the agent started as systemd starts it: stderr (and
// stdout) a stream whose device and inode JOURNAL_STREAM names. Here that
// stream is a file, so the test reads exactly what the journal would.
type journalAgent struct {
	cmd    *exec.Cmd
	socket string
	log    string
}

// startJournalAgent starts the agent on a unix socket with in-tree plugins;
// stream says what JOURNAL_STREAM names: "self" its own stderr, "other"
// another file (stderr redirected away from the journal).
func startJournalAgent(t *testing.T, stream string, extra ...string) *journalAgent {
	t.Helper()
	dir := harness.ShortTempDir(t)
	a := &journalAgent{socket: filepath.Join(dir, "qga.sock"), log: filepath.Join(dir, "stderr")}
	stderr, err := os.Create(a.log)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	named := stderr
	if stream == "other" {
		if named, err = os.Create(filepath.Join(dir, "journal")); err != nil {
			t.Fatal(err)
		}
		defer named.Close()
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(named.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "none.hcl"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bin := harness.BinDir(t)
	args := append([]string{"run", "--plugin-dir", bin, "-t", filepath.Join(dir, "state"),
		"--runtime-dir", filepath.Join(dir, "run"), "-c", filepath.Join(dir, "none.hcl"),
		"-m", "unix-listen", "-p", a.socket}, extra...)
	a.cmd = exec.Command(filepath.Join(bin, "guest-agent"), args...)
	a.cmd.Env = append(os.Environ(), fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	a.cmd.Stdout, a.cmd.Stderr = stderr, stderr
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.stop(t)
		if t.Failed() {
			t.Logf("agent's stderr:\n%s", a.read(t))
		}
	})
	harness.WaitForPing(t, a.socket, 10*time.Second)
	return a
}

func (a *journalAgent) stop(t *testing.T) {
	if a.cmd.ProcessState != nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
		t.Errorf("guest-agent did not stop within 10s of SIGTERM")
	}
}

func (a *journalAgent) read(t *testing.T) string {
	b, err := os.ReadFile(a.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitFor waits until a line of the log matches re and returns its
// submatches.
func (a *journalAgent) waitFor(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := re.FindStringSubmatch(a.read(t)); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line matching %s within 10s", re)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (a *journalAgent) call(t *testing.T, req string) {
	t.Helper()
	c := harness.MustDial(t, a.socket)
	line, err := c.Call(req)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := harness.Decode(t, line); r.Error != nil {
		t.Fatalf("%s: %+v", req, r.Error)
	}
	c.Close()
}

var anyTimestamp = regexp.MustCompile(`\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d`)

// Under systemd (JOURNAL_STREAM names the agent's stderr) every line carries
// the journal's priority prefix and no timestamp of the agent's or of a
// plugin's; at the default level an operator sees one line per plugin start,
// per crash (name, pid, what killed it, when it comes back) and per stop.
func TestJournalLines(t *testing.T) {
	a := startJournalAgent(t, "self")
	startRe := regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent: plugin started: plugin=cmd-system pid=(\d+) kind=command$`)
	a.call(t, `{"execute":"guest-get-host-name"}`)
	m := a.waitFor(t, startRe)
	pid, _ := strconv.Atoi(m[1])
	if !strings.HasSuffix(harness.Cmdline(pid), "guest-agent-cmd-system") {
		t.Fatalf("pid %d of the start line is %q, not cmd-system", pid, harness.Cmdline(pid))
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, regexp.MustCompile(`(?m)^<3>\[ERROR\] guest-agent: plugin exited unexpectedly: plugin=cmd-system pid=`+m[1]+
		` reason="killed by SIGKILL" restart="on its next command"$`))
	a.call(t, `{"execute":"guest-get-host-name"}`)
	deadline := time.Now().Add(10 * time.Second)
	for len(startRe.FindAllString(a.read(t), -1)) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no second start line for cmd-system after its crash")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.stop(t)
	log := a.read(t)

	lines := strings.Split(strings.TrimSuffix(log, "\n"), "\n")
	prefix := regexp.MustCompile(`^<[0-7]>`)
	for _, line := range lines {
		if !prefix.MatchString(line) {
			t.Errorf("line without a priority prefix: %q", line)
		}
		if anyTimestamp.MatchString(line) {
			t.Errorf("line with a timestamp (the journal adds its own): %q", line)
		}
		if strings.HasPrefix(line, "<7>") {
			t.Errorf("debug line at the default level: %q", line)
		}
	}
	// The crashed instance: one start line, one crash line, nothing else
	// (go-plugin's own "plugin process exited" is debug).
	var ofCrashed []string
	for _, line := range lines {
		if strings.Contains(line, "pid="+m[1]+" ") || strings.Contains(line, "id="+m[1]+" ") || strings.HasSuffix(line, "id="+m[1]) {
			ofCrashed = append(ofCrashed, line)
		}
	}
	if len(ofCrashed) != 2 {
		t.Errorf("lines about the crashed cmd-system (pid %s): %d, want its start and its crash:\n%s", m[1], len(ofCrashed), strings.Join(ofCrashed, "\n"))
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent: plugin started: plugin=parser-json pid=\d+ kind=parser$`),
		regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent: plugin started: plugin=exchange-virtio pid=\d+ kind=exchange$`),
		regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent: plugin stopped: plugin=exchange-virtio pid=\d+ reason="idle exchange: its channels are served by the parser"$`),
		// A plugin's own record, forwarded by go-plugin, without the
		// plugin's timestamp.
		regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent\.parser-json: serving a handed-over listener: .*channel=qga`),
		regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent: plugin stopped: plugin=parser-json pid=\d+ reason="agent stopping"$`),
		regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent: plugin stopped: plugin=cmd-system pid=\d+ reason="agent stopping"$`),
		regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent: agent stopped$`),
	} {
		if !want.MatchString(log) {
			t.Errorf("no line matching %s", want)
		}
	}
	if n := strings.Count(log, "plugin process exited"); n != 0 {
		t.Errorf("go-plugin's own exit lines at the default level: %d", n)
	}
}

// At debug level (-v) debug records reach the journal as priority 7, among
// them go-plugin's own lines on a plugin's start and end.
func TestJournalDebugPriority(t *testing.T) {
	a := startJournalAgent(t, "self", "-v")
	// The handed-over listener answers before the supervisor has finished
	// its start: stopped then, it never logs "agent ready".
	a.waitFor(t, regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent: agent ready: `))
	a.stop(t)
	log := a.read(t)
	for _, line := range strings.Split(strings.TrimSuffix(log, "\n"), "\n") {
		if !regexp.MustCompile(`^<[0-7]>`).MatchString(line) || anyTimestamp.MatchString(line) {
			t.Errorf("not a journal line: %q", line)
		}
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^<7>\[DEBUG\] guest-agent: waiting for RPC address: plugin=parser-json$`),
		regexp.MustCompile(`(?m)^<7>\[DEBUG\] guest-agent: plugin process exited: plugin=parser-json id=\d+$`),
		regexp.MustCompile(`(?m)^<6>\[INFO\]  guest-agent: agent ready: `),
	} {
		if !want.MatchString(log) {
			t.Errorf("no line matching %s", want)
		}
	}
}

// JOURNAL_STREAM inherited by an agent whose stderr goes elsewhere (a shell
// under a service, a redirect): plain hclog lines with their timestamps.
func TestJournalStreamOfAnotherFile(t *testing.T) {
	a := startJournalAgent(t, "other")
	a.stop(t)
	log := a.read(t)
	for _, line := range strings.Split(strings.TrimSuffix(log, "\n"), "\n") {
		if strings.HasPrefix(line, "<") || !anyTimestamp.MatchString(line) {
			t.Errorf("journal formatting on a stderr that is not the journal: %q", line)
		}
	}
}

// Package harness starts real guest-agent processes (supervisor and plugin
// subprocesses built by `make build`) and real qemu-ga for the tests.
package harness

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BinDir is where `make build` put the binaries.
func BinDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("GUEST_AGENT_BIN")
	if dir == "" {
		t.Fatal("GUEST_AGENT_BIN is not set: run the tests through `make test`")
	}
	if _, err := os.Stat(filepath.Join(dir, "guest-agent")); err != nil {
		t.Fatalf("no guest-agent binary in %s: %v", dir, err)
	}
	return dir
}

// Agent is one running guest-agent.
type Agent struct {
	Cmd        *exec.Cmd
	Socket     string
	StateDir   string
	RuntimeDir string
	Log        *SyncBuffer
}

// SyncBuffer is a goroutine-safe log buffer.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Options for StartAgent.
type Options struct {
	PluginDir string   // default: BinDir
	Args      []string // extra flags
	Config    string   // HCL written to a file and passed with -c
	StateDir  string   // default: a temp dir
	// RuntimeDir (plugin sockets, frozen flags; /run/guest-agent on a real
	// guest): default a temp dir. A new one after a restart stands for a
	// reboot.
	RuntimeDir string
	// Quiet runs the agent at the info level, as in production, instead
	// of -v (debug lines cost the supervisor memory of their own).
	Quiet bool
}

// StartAgent starts guest-agent on a unix socket and waits until it answers.
func StartAgent(t testing.TB, o Options) *Agent {
	t.Helper()
	dir := shortTempDir(t)
	if o.PluginDir == "" {
		o.PluginDir = BinDir(t)
	}
	if o.StateDir == "" {
		o.StateDir = filepath.Join(dir, "state")
	}
	if o.RuntimeDir == "" {
		o.RuntimeDir = filepath.Join(dir, "run")
	}
	a := &Agent{Socket: filepath.Join(dir, "qga.sock"), StateDir: o.StateDir, RuntimeDir: o.RuntimeDir, Log: &SyncBuffer{}}
	args := []string{"run", "--plugin-dir", o.PluginDir, "-t", o.StateDir, "--runtime-dir", o.RuntimeDir}
	if !o.Quiet {
		args = append(args, "-v")
	}
	if o.Config != "" {
		cfgPath := filepath.Join(dir, "agent.hcl")
		if err := os.WriteFile(cfgPath, []byte(o.Config), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-c", cfgPath)
	} else {
		args = append(args, "-c", filepath.Join(dir, "none.hcl"), "-m", "unix-listen", "-p", a.Socket)
	}
	args = append(args, o.Args...)
	// The binary from BinDir always: plugins are found next to it too.
	a.Cmd = exec.Command(filepath.Join(BinDir(t), "guest-agent"), args...)
	a.Cmd.Stdout, a.Cmd.Stderr = a.Log, a.Log
	if o.Config == "" {
		_ = os.WriteFile(filepath.Join(dir, "none.hcl"), nil, 0o600)
	}
	if err := a.Cmd.Start(); err != nil {
		t.Fatalf("start guest-agent: %v", err)
	}
	t.Cleanup(func() {
		a.Stop(t)
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Log.String())
		}
	})
	if o.Config == "" {
		WaitForPing(t, a.Socket, 10*time.Second)
	}
	return a
}

// Stop sends SIGTERM and waits.
func (a *Agent) Stop(t testing.TB) {
	if a.Cmd.ProcessState != nil {
		return
	}
	_ = a.Cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- a.Cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = a.Cmd.Process.Kill()
		<-done
		t.Errorf("guest-agent did not stop within 10s of SIGTERM")
	}
}

func shortTempDir(t testing.TB) string {
	// Unix socket paths are capped at 108 bytes: t.TempDir() can be long.
	dir, err := os.MkdirTemp("", "ga")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// ShortTempDir is a temp dir whose path is short enough for sockets.
func ShortTempDir(t testing.TB) string { return shortTempDir(t) }

// WaitForPing waits until the agent on socket answers guest-ping.
func WaitForPing(t testing.TB, socket string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := Dial(socket)
		if err == nil {
			_, err = c.Call(`{"execute":"guest-ping"}`)
			c.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent on %s did not answer within %s: %v", socket, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Conn is a raw protocol connection.
type Conn struct {
	net.Conn
	R *bufio.Reader
}

// Dial connects to an agent socket.
func Dial(socket string) (*Conn, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	return &Conn{Conn: c, R: bufio.NewReaderSize(c, 1<<20)}, nil
}

// MustDial connects or fails the test.
func MustDial(t testing.TB, socket string) *Conn {
	t.Helper()
	c, err := Dial(socket)
	if err != nil {
		t.Fatalf("dial %s: %v", socket, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Call sends one request line and returns the reply line.
func (c *Conn) Call(req string) (string, error) {
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte(req)); err != nil {
		return "", err
	}
	return c.ReadLine()
}

// ReadLine reads one reply line.
func (c *Conn) ReadLine() (string, error) {
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return "", err
	}
	line, err := c.R.ReadString('\n')
	return line, err
}

// Reply is a decoded reply.
type Reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID json.RawMessage `json:"id"`
}

// Decode parses a reply line (a leading 0xFF is reported separately).
func Decode(t testing.TB, line string) (Reply, bool) {
	t.Helper()
	delimited := strings.HasPrefix(line, "\xff")
	var r Reply
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "\xff")), &r); err != nil {
		t.Fatalf("reply %q is not JSON: %v", line, err)
	}
	return r, delimited
}

// SyncDelimited resynchronises as libvirt does before every command: a
// 0xFF byte, guest-sync-delimited with id, then lines are read until the
// delimited one that returns id, all within d. It returns the lines read
// before that one: replies the host would drop as stale.
func (c *Conn) SyncDelimited(id int, within time.Duration) (before []string, err error) {
	if err := c.SetDeadline(time.Now().Add(within)); err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(c, "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id); err != nil {
		return nil, err
	}
	want := strconv.Itoa(id)
	for {
		line, err := c.R.ReadString('\n')
		if err != nil {
			return before, fmt.Errorf("guest-sync-delimited %d: no reply within %s (%w); %d lines before", id, within, err, len(before))
		}
		var r Reply
		if strings.HasPrefix(line, "\xff") && json.Unmarshal([]byte(line[1:]), &r) == nil && r.Error == nil && string(r.Return) == want {
			return before, nil
		}
		before = append(before, line)
	}
}

// Children returns the pids whose parent is pid.
func Children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) > 2 {
			if pp, _ := strconv.Atoi(fields[1]); pp == pid {
				out = append(out, p)
			}
		}
	}
	return out
}

// Alive reports whether pid exists (and is not a zombie).
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] != 'Z'
}

// Exists reports whether pid is still in the process table (zombie or not).
func Exists(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// Cmdline returns a process's argv[0].
func Cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	arg0, _, _ := strings.Cut(string(b), "\x00")
	return arg0
}

// StartQemuGA starts Debian's qemu-ga on a unix socket and bounds its stop: qemu-ga 7.2's SIGTERM
// handler calls g_main_loop_quit, which is not async-signal-safe, and a
// signal that lands while the main loop holds its context lock leaves the
// process blocked on that lock for good (seen here: a test binary waited
// out its 10-minute timeout). A SIGTERM not obeyed within 3 s is followed
// by SIGKILL. The log goes to a file, so waiting never depends on pipes
// that exec'd children inherited.
func StartQemuGA(t testing.TB, extra ...string) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-ga")
	if err != nil {
		bin = "/usr/sbin/qemu-ga"
	}
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "ref.sock")
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "qemu-ga.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(bin, append([]string{"-m", "unix-listen", "-p", sock, "-t", state}, extra...)...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu-ga (Debian package qemu-guest-agent): %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			t.Logf("qemu-ga ignored SIGTERM for 3 s: SIGKILL")
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("qemu-ga log:\n%s", b)
		}
	})
	WaitForPing(t, sock, 10*time.Second)
	return sock
}

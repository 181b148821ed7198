package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// The command monitor as its clients use it: the Google guest agent's
// command.SendCommand writes one JSON object without a newline and reads
// the reply to EOF. monitorCall is that client, written from those rules.

// monitorReply is one decoded reply.
type monitorReply struct {
	Status        int
	StatusMessage string
	Members       map[string]json.RawMessage // all of them, Status included
	Raw           []byte
}

// monitorExchange writes req in pieces of piece bytes (all at once when 0)
// and reads everything up to EOF; an error other than EOF (ECONNRESET: the
// agent closed with input unread) fails the test.
func monitorExchange(t *testing.T, socket string, req []byte, piece int, pause time.Duration) monitorReply {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatalf("connect %s: %v", socket, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if piece <= 0 {
		piece = max(len(req), 1)
	}
	for i := 0; i < len(req); i += piece {
		if _, err := c.Write(req[i:min(i+piece, len(req))]); err != nil {
			t.Fatalf("write %q: %v", req, err)
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	raw, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the reply to %q to EOF: %v (read %q)", tail(req), err, raw)
	}
	return decodeMonitorReply(t, req, raw)
}

func monitorCall(t *testing.T, socket, req string) monitorReply {
	t.Helper()
	return monitorExchange(t, socket, []byte(req), 0, 0)
}

func tail(b []byte) []byte { return b[max(0, len(b)-200):] }

func decodeMonitorReply(t *testing.T, req, raw []byte) monitorReply {
	t.Helper()
	r := monitorReply{Raw: raw}
	if err := json.Unmarshal(raw, &r.Members); err != nil {
		t.Fatalf("reply to %q is not one JSON object: %q (%v)", tail(req), raw, err)
	}
	if err := json.Unmarshal(r.Members["Status"], &r.Status); err != nil {
		t.Fatalf("reply to %q: no integer Status: %q", tail(req), raw)
	}
	if err := json.Unmarshal(r.Members["StatusMessage"], &r.StatusMessage); err != nil {
		t.Fatalf("reply to %q: no string StatusMessage: %q", tail(req), raw)
	}
	return r
}

func (r monitorReply) expect(t *testing.T, status int, message string) {
	t.Helper()
	if r.Status != status || (message != "" && r.StatusMessage != message) {
		t.Fatalf("reply %s, want Status %d %q", r.Raw, status, message)
	}
}

// The Google agent's texts.
const (
	textNotFound   = "Could not find a handler for the requested command"
	textBadRequest = "Could not parse valid JSON from request"
	textConnError  = "Connection error"
	textTimeout    = "Connection timeout before reading valid request"
	textInternal   = "The command server encountered an internal error trying to respond to your request"
)

// startMonitorAgent runs the agent with the host's qga channel and the
// command monitor beside it (monitorExtra goes into command_monitor).
func startMonitorAgent(t *testing.T, monitorExtra string) (a *harness.Agent, qgaSock, monSock string) {
	t.Helper()
	return startMonitorAgentWith(t, harness.Options{}, monitorExtra)
}

func startMonitorAgentWith(t *testing.T, o harness.Options, monitorExtra string) (a *harness.Agent, qgaSock, monSock string) {
	t.Helper()
	dir := harness.ShortTempDir(t)
	qgaSock = filepath.Join(dir, "qga.sock")
	monSock = filepath.Join(dir, "m", "commands.sock")
	o.PluginDir = pluginDir
	o.Config = fmt.Sprintf(`
channel "qga" {
  method  = "unix-listen"
  path    = %q
  dialect = "qga"
}
command_monitor {
  enabled = true
  path    = %q
  %s
}
`, qgaSock, monSock, monitorExtra)
	a = harness.StartAgent(t, o)
	harness.WaitForPing(t, qgaSock, 10*time.Second)
	waitMonitor(t, monSock)
	return a, qgaSock, monSock
}

func waitMonitor(t *testing.T, sock string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no command monitor on %s", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMonitorStatusCodes(t *testing.T) {
	_, qga, mon := startMonitorAgent(t, `request_timeout = "1s"`)

	// 0: a core command, a plugin's command (result members beside
	// Status), results that are not objects under "Result", and "Name"
	// as the routing key as the Google agent's README shows it.
	monitorCall(t, mon, `{"Command":"guest-ping"}`).expect(t, 0, "")
	if r := monitorCall(t, mon, `{"Name":"guest-ping"}`); r.Status != 0 || len(r.Members) != 2 {
		t.Fatalf("Name: %s", r.Raw)
	}
	r := monitorCall(t, mon, `{"Command":"test-pid"}`)
	r.expect(t, 0, "")
	if _, ok := r.Members["pid"]; !ok || len(r.Members) != 3 {
		t.Fatalf("result members not beside Status: %s", r.Raw)
	}
	for in, want := range map[string]string{
		`"vm-1"`: `"vm-1"`, `[1,2]`: `[1,2]`, `42`: `42`, `null`: `null`, `{"Status":1}`: `{"Status":1}`,
	} {
		r := monitorCall(t, mon, fmt.Sprintf(`{"Command":"test-result","json":%q}`, in))
		r.expect(t, 0, "")
		if string(r.Members["Result"]) != want || len(r.Members) != 3 {
			t.Errorf("result %s: reply %s, want it under Result", in, r.Raw)
		}
	}
	info := monitorCall(t, mon, `{"Command":"guest-info"}`)
	info.expect(t, 0, "")
	if !strings.Contains(string(info.Members["supported_commands"]), `"test-monitor-only"`) {
		t.Errorf("guest-info on the monitor does not list its monitor-only command: %s", info.Raw)
	}

	// 101: unknown, unnamed; 102: not JSON, not an object, not UTF-8, a
	// non-string command.
	monitorCall(t, mon, `{"Command":"no-such-command"}`).expect(t, 101, textNotFound)
	monitorCall(t, mon, `{"Arguments":{}}`).expect(t, 101, textNotFound)
	for _, bad := range []string{`{"Command":"guest-ping",}`, `["guest-ping"]`, `"guest-ping"`, "{\"Command\":\"\xff\"}", `{"Command":7}`, `}`} {
		monitorCall(t, mon, bad).expect(t, 102, textBadRequest)
	}

	// 103: the client ends its side before a whole request.
	c, err := net.Dial("unix", mon)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(`{"Command":"guest-`))
	c.(*net.UnixConn).CloseWrite()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	raw, err := io.ReadAll(c)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	decodeMonitorReply(t, nil, raw).expect(t, 103, textConnError)

	// 104: the request never completes within request_timeout.
	start := time.Now()
	monitorExchange(t, mon, []byte(`{"Command":"guest-ping"`), 0, 0).expect(t, 104, textTimeout)
	if d := time.Since(start); d < 900*time.Millisecond || d > 5*time.Second {
		t.Errorf("104 after %v, request_timeout is 1s", d)
	}

	// 105: the command's own error text; 106: a plugin whose result is
	// not JSON.
	monitorCall(t, mon, `{"Command":"test-fail","message":"the disk is on fire"}`).expect(t, 105, "the disk is on fire")
	monitorCall(t, mon, `{"Command":"test-result","json":"{\"broken\":"}`).expect(t, 106, textInternal)

	// A command served on the monitor dialect only: unknown to the host.
	if r := monitorCall(t, mon, `{"Command":"test-monitor-only"}`); r.Status != 0 || string(r.Members["seen-by"]) != `"monitor"` {
		t.Errorf("monitor-only command on the monitor: %s", r.Raw)
	}
	hc := harness.MustDial(t, qga)
	line, err := hc.Call(`{"execute":"test-monitor-only"}`)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, line, "CommandNotFound", "The command test-monitor-only has not been found")
	line, _ = hc.Call(`{"execute":"guest-info"}`)
	if strings.Contains(line, "test-monitor-only") {
		t.Errorf("the host's guest-info lists a monitor-only command")
	}
}

// A request written a byte at a time, and two requests in one connection:
// the first is answered, the second never read, and the client still reads
// its reply to a clean EOF.
func TestMonitorFraming(t *testing.T) {
	_, _, mon := startMonitorAgent(t, "")
	req := []byte(`  {"Command": "test-result", "json": "{\"a\": [1, {\"b\": \"}\"}]}"}`)
	r := monitorExchange(t, mon, req, 1, time.Millisecond)
	r.expect(t, 0, "")
	if strings.ReplaceAll(string(r.Members["a"]), " ", "") != `[1,{"b":"}"}]` {
		t.Errorf("split request: %s", r.Raw)
	}
	r = monitorCall(t, mon, `{"Command":"guest-ping"}{"Command":"no-such-command"}`)
	if r.Status != 0 || len(r.Members) != 2 {
		t.Errorf("two values: %s, want the first one's reply only", r.Raw)
	}
	// A client that sends a stream of junk after its request is cut off
	// after the reply all the same.
	c, err := net.Dial("unix", mon)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(`{"Command":"guest-ping"}`))
	replied := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 64)
		n, _ := io.ReadAtLeast(c, buf, len(`{"Status":0,"StatusMessage":""}`))
		replied <- buf[:n]
	}()
	junk := []byte(strings.Repeat("x", 4096))
	deadline := time.Now().Add(10 * time.Second)
	var werr error
	for time.Now().Before(deadline) && werr == nil {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		_, werr = c.Write(junk)
	}
	if werr == nil {
		t.Fatal("the agent kept reading junk for 10 s after its reply")
	}
	if got := <-replied; string(got) != `{"Status":0,"StatusMessage":""}` {
		t.Errorf("reply before the junk: %q", got)
	}
}

// A request that never completes gets 104 after request_timeout and its
// connection closed; other connections are served meanwhile.
func TestMonitorStalledRequest(t *testing.T) {
	_, qga, mon := startMonitorAgent(t, `request_timeout = "2s"`)
	stalled := make(chan monitorReply, 1)
	start := time.Now()
	go func() { stalled <- monitorExchange(t, mon, []byte(`{"Command":"guest-ping","x":"`), 0, 0) }()
	hc := harness.MustDial(t, qga)
	var slowest time.Duration
	for time.Since(start) < 1500*time.Millisecond {
		t0 := time.Now()
		monitorCall(t, mon, `{"Command":"guest-ping"}`).expect(t, 0, "")
		if _, err := hc.Call(`{"execute":"guest-ping"}`); err != nil {
			t.Fatal(err)
		}
		slowest = max(slowest, time.Since(t0))
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case <-stalled:
		t.Fatalf("the stalled request was answered after %v, before request_timeout", time.Since(start))
	default:
	}
	r := <-stalled
	r.expect(t, 104, textTimeout)
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("104 after %v (request_timeout 2s)", d)
	}
	if slowest > time.Second {
		t.Errorf("a call took %v while a request was stalled", slowest)
	}
}

// 10,000 malformed requests over as many connections from several clients:
// every one is answered, the channel keeps serving, and the agent's memory
// comes back to within a few MiB of idle.
func TestMonitorMalformedFlood(t *testing.T) {
	// At the info level, as in production: -v's debug lines per session
	// would make the supervisor's memory the log's.
	a, _, mon := startMonitorAgentWith(t, harness.Options{Quiet: true}, "max_connections = 32")
	monitorCall(t, mon, `{"Command":"guest-ping"}`).expect(t, 0, "")
	idle := agentRSSKiB(t, a)
	parser := onePluginProc(t, a.Cmd.Process.Pid, "parser-json")
	idleSup, idleParser := rssKiB(t, a.Cmd.Process.Pid), rssKiB(t, parser)
	inputs := []string{
		`{"Command":`, `]`, `{"Command":"x",}`, `[1,2,3]`, "{\"Command\":\"\xc0\xaf\"}", `{"Command":null}`,
		`{"Command":"no-such"}`, `{"Name":{"a":1}}`, `"` + strings.Repeat("a", 3000) + `"`,
		`{"Command":"guest-ping","x":` + strings.Repeat("[", 500) + strings.Repeat("]", 499) + `}`,
	}
	const total, clients = 10000, 12
	var next, answered atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				in := inputs[i%int64(len(inputs))]
				c, err := net.Dial("unix", mon)
				if err != nil {
					errs <- fmt.Errorf("request %d: %w", i, err)
					return
				}
				c.SetDeadline(time.Now().Add(20 * time.Second))
				c.Write([]byte(in))
				if in == `{"Command":` {
					c.(*net.UnixConn).CloseWrite() // truncated: the client gives up writing
				}
				raw, err := io.ReadAll(c)
				c.Close()
				var r struct{ Status *int }
				if err != nil || json.Unmarshal(raw, &r) != nil || r.Status == nil || *r.Status == 0 {
					errs <- fmt.Errorf("request %d %q: reply %q, %v", i, tail([]byte(in)), raw, err)
					return
				}
				answered.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if answered.Load() != total {
		t.Fatalf("%d of %d answered", answered.Load(), total)
	}
	monitorCall(t, mon, `{"Command":"guest-ping"}`).expect(t, 0, "")
	t.Logf("after the flood: supervisor %d KiB (idle %d), parser %d KiB (idle %d)", rssKiB(t, a.Cmd.Process.Pid), idleSup, rssKiB(t, parser), idleParser)
	back := waitMemoryBack(t, "agent after 10,000 malformed requests", func() int { return agentRSSKiB(t, a) }, idle, 4<<10, 20*time.Second)
	t.Logf("agent RSS idle %d KiB, after the flood %d KiB", idle, back)
}

// The socket's mode and group by default and as configured, the stale
// socket of a killed agent replaced.
func TestMonitorSocket(t *testing.T) {
	a, _, mon := startMonitorAgent(t, "")
	st := statSocket(t, mon)
	if st.mode != 0o770 || st.gid != 0 {
		t.Errorf("default socket mode %#o gid %d, want 0770 and root's group", st.mode, st.gid)
	}
	dirMode := statSocket(t, filepath.Dir(mon)).mode
	if dirMode != 0o711 {
		t.Errorf("socket directory mode %#o, want 0711", dirMode)
	}
	a.Cmd.Process.Kill()
	a.Cmd.Wait()
	if _, err := os.Lstat(mon); err != nil {
		t.Fatalf("a killed agent's socket should be left behind for this test: %v", err)
	}
	// A new agent on the same paths: the stale socket is replaced.
	dir := filepath.Dir(filepath.Dir(mon))
	b := harness.StartAgent(t, harness.Options{PluginDir: pluginDir, Config: fmt.Sprintf(`
channel "qga" {
  method  = "unix-listen"
  path    = %q
  dialect = "qga"
}
command_monitor {
  enabled      = true
  path         = %q
  socket_mode  = "0750"
  socket_group = "adm"
}
`, filepath.Join(dir, "qga2.sock"), mon)})
	_ = b
	waitMonitor(t, mon)
	monitorCall(t, mon, `{"Command":"guest-ping"}`).expect(t, 0, "")
	st = statSocket(t, mon)
	if st.mode != 0o750 || st.gid != groupID(t, "adm") {
		t.Errorf("configured socket mode %#o gid %d, want 0750 and adm", st.mode, st.gid)
	}
}

type fileStat struct {
	mode uint32
	uid  int
	gid  int
}

func statSocket(t *testing.T, path string) fileStat {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fileStat{mode: uint32(fi.Mode().Perm()), uid: int(st.Uid), gid: int(st.Gid)}
}

func groupID(t *testing.T, name string) int {
	t.Helper()
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	id, err := strconv.Atoi(g.Gid)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

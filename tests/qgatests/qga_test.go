// Package qgatests ports the behaviours QEMU's own tests/unit/test-qga.c
// checks to guest-agent, end to end: the built supervisor and plugins over a
// real socket. Each port also runs against Debian's qemu-ga 7.2 where 7.2
// has the feature, which shows the port asserts what qemu-ga does.
//
// Differences from test-qga.c: files are opened by absolute path in a
// temporary directory (test-qga.c starts qemu-ga in its test directory and
// opens "foo"); -a, capture-output as an enum and guest-get-load are not in
// qemu-ga 7.2, so those run against guest-agent only; test_qga_config
// (qemu-ga -D with a GLib key file) is not ported: guest-agent's
// configuration is HCL.
package qgatests

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// agent is one running agent under test.
type agent struct {
	name string
	c    *harness.Conn
	dir  string // a temporary directory for its files
}

type starter struct {
	name string
	// start runs the agent with extra flags and returns its socket.
	start func(t *testing.T, extra ...string) string
}

var (
	ours = starter{"guest-agent", func(t *testing.T, extra ...string) string {
		return harness.StartAgent(t, harness.Options{Args: extra}).Socket
	}}
	ref = starter{"qemu-ga", func(t *testing.T, extra ...string) string {
		return harness.StartQemuGA(t, extra...)
	}}
)

func (s starter) run(t *testing.T, extra ...string) *agent {
	t.Helper()
	return &agent{name: s.name, c: harness.MustDial(t, s.start(t, extra...)), dir: t.TempDir()}
}

// reply is a decoded reply; numbers stay json.Number.
type reply struct {
	Return any `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID any `json:"id"`
}

func (a *agent) qmp(t *testing.T, format string, args ...any) reply {
	t.Helper()
	req := fmt.Sprintf(format, args...)
	line, err := a.c.Call(req + "\n")
	if err != nil {
		t.Fatalf("%s: %s: %v", a.name, req, err)
	}
	return decode(t, line)
}

func decode(t *testing.T, line string) reply {
	t.Helper()
	var r reply
	d := json.NewDecoder(strings.NewReader(line))
	d.UseNumber()
	if err := d.Decode(&r); err != nil {
		t.Fatalf("reply %q is not JSON: %v", line, err)
	}
	return r
}

// ok fails the test if the reply is an error (qmp_assert_no_error).
func ok(t *testing.T, r reply) reply {
	t.Helper()
	if r.Error != nil {
		t.Fatalf("assertion failed: %s %s", r.Error.Class, r.Error.Desc)
	}
	return r
}

// wantError checks the class and that the description is not empty or,
// when contains is set, holds it.
func wantError(t *testing.T, r reply, class, contains string) {
	t.Helper()
	if r.Error == nil {
		t.Fatalf("want a %s error, got return %v", class, r.Return)
	}
	if r.Error.Class != class {
		t.Fatalf("class %q, want %q (%s)", r.Error.Class, class, r.Error.Desc)
	}
	if r.Error.Desc == "" || !strings.Contains(r.Error.Desc, contains) {
		t.Fatalf("desc %q, want one containing %q", r.Error.Desc, contains)
	}
}

func obj(t *testing.T, v any) map[string]any {
	t.Helper()
	m, isObj := v.(map[string]any)
	if !isObj {
		t.Fatalf("want an object, got %#v", v)
	}
	return m
}

func list(t *testing.T, v any) []any {
	t.Helper()
	l, isList := v.([]any)
	if !isList {
		t.Fatalf("want a list, got %#v", v)
	}
	return l
}

func num(t *testing.T, m map[string]any, key string) int64 {
	t.Helper()
	n, isNum := m[key].(json.Number)
	if !isNum {
		t.Fatalf("%q is %#v, want an integer (in %v)", key, m[key], m)
	}
	i, err := n.Int64()
	if err != nil {
		t.Fatalf("%q: %v", key, err)
	}
	return i
}

func boolean(t *testing.T, m map[string]any, key string) bool {
	t.Helper()
	b, isBool := m[key].(bool)
	if !isBool {
		t.Fatalf("%q is %#v, want a bool (in %v)", key, m[key], m)
	}
	return b
}

func str(t *testing.T, m map[string]any, key string) string {
	t.Helper()
	s, isStr := m[key].(string)
	if !isStr {
		t.Fatalf("%q is %#v, want a string (in %v)", key, m[key], m)
	}
	return s
}

// handle is the integer a guest-file-open returned.
func handle(t *testing.T, r reply) int64 {
	t.Helper()
	n, isNum := r.Return.(json.Number)
	i, err := n.Int64()
	if !isNum || err != nil {
		t.Fatalf("handle %#v is not an integer", r.Return)
	}
	return i
}

func hasKeys(t *testing.T, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, has := m[k]; !has {
			t.Errorf("no %q in %v", k, m)
		}
	}
}

// TestQGA holds the ports that share one agent, as test-qga.c's fixture.
func TestQGA(t *testing.T) {
	agents := []*agent{ours.run(t), ref.run(t)}
	both := func(name string, f func(t *testing.T, a *agent)) {
		t.Run(name, func(t *testing.T) {
			for _, a := range agents {
				t.Run(a.name, func(t *testing.T) { f(t, a) })
			}
		})
	}
	only := func(name string, f func(t *testing.T, a *agent)) {
		t.Run(name, func(t *testing.T) {
			t.Run(agents[0].name, func(t *testing.T) { f(t, agents[0]) })
		})
	}

	both("sync-delimited", testSyncDelimited)
	both("sync", testSync)
	both("ping", func(t *testing.T, a *agent) { ok(t, a.qmp(t, `{"execute":"guest-ping"}`)) })
	both("info", testInfo)
	both("network-get-interfaces", testNetworkGetInterfaces)
	if _, err := os.Stat("/sys/devices/system/cpu/cpu0"); err == nil {
		both("get-vcpus", testGetVcpus)
	}
	both("get-fsinfo", testGetFsinfo)
	only("get-load", testGetLoad) // QEMU 10.0's command
	both("get-memory-block-info", testGetMemoryBlockInfo)
	both("get-memory-blocks", testGetMemoryBlocks)
	both("file-ops", testFileOps)
	both("file-write-read", testFileWriteRead)
	both("get-time", testGetTime)
	both("id", testID)
	both("invalid-oob", func(t *testing.T, a *agent) {
		wantError(t, a.qmp(t, `{"exec-oob":"guest-ping"}`), "GenericError", "")
	})
	both("invalid-cmd", func(t *testing.T, a *agent) {
		wantError(t, a.qmp(t, `{"execute":"guest-invalid-cmd"}`), "CommandNotFound", "")
	})
	both("invalid-args", func(t *testing.T, a *agent) {
		r := a.qmp(t, `{"execute":"guest-ping","arguments":{"foo":42}}`)
		wantError(t, r, "GenericError", "")
		if r.Error.Desc != "Parameter 'foo' is unexpected" {
			t.Fatalf("desc %q", r.Error.Desc)
		}
	})
	both("fsfreeze-status", func(t *testing.T, a *agent) {
		if s, _ := ok(t, a.qmp(t, `{"execute":"guest-fsfreeze-status"}`)).Return.(string); s != "thawed" {
			t.Fatalf("status %q, want thawed", s)
		}
	})
	both("guest-exec", testGuestExec)
	// qemu-ga 7.2 takes capture-output as a bool only: true is "separated".
	t.Run("guest-exec-separated", func(t *testing.T) {
		t.Run("guest-agent", func(t *testing.T) { testGuestExecSeparated(t, agents[0], `"separated"`) })
		t.Run("guest-agent true", func(t *testing.T) { testGuestExecSeparated(t, agents[0], `true`) })
		t.Run("qemu-ga true", func(t *testing.T) { testGuestExecSeparated(t, agents[1], `true`) })
	})
	only("guest-exec-merged", testGuestExecMerged)
	both("guest-exec-invalid", testGuestExecInvalid)
	both("guest-get-host-name", testGetHostName)
	both("guest-get-timezone", func(t *testing.T, a *agent) {
		hasKeys(t, obj(t, ok(t, a.qmp(t, `{"execute":"guest-get-timezone"}`)).Return), "offset")
	})
	both("guest-get-users", func(t *testing.T, a *agent) {
		// Not much to test: a list, possibly empty, never null.
		list(t, ok(t, a.qmp(t, `{"execute":"guest-get-users"}`)).Return)
	})
}

func testSyncDelimited(t *testing.T, a *agent) {
	r := rand.Uint32()
	if _, err := fmt.Fprintf(a.c, "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", r); err != nil {
		t.Fatal(err)
	}
	if err := a.c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	// Read and ignore anything until the delimiter.
	for {
		b, err := a.c.R.ReadByte()
		if err != nil {
			t.Fatal(err)
		}
		if b == 0xff {
			break
		}
	}
	line, err := a.c.ReadLine()
	if err != nil {
		t.Fatal(err)
	}
	v := ok(t, decode(t, line))
	if n, _ := v.Return.(json.Number); n.String() != fmt.Sprint(r) {
		t.Fatalf("return %v, want %d", v.Return, r)
	}
}

func testSync(t *testing.T, a *agent) {
	r := rand.Uint32()
	v := ok(t, a.qmp(t, `{"execute":"guest-sync","arguments":{"id":%d}}`, r))
	if n, _ := v.Return.(json.Number); n.String() != fmt.Sprint(r) {
		t.Fatalf("return %v, want %d", v.Return, r)
	}
}

func testInfo(t *testing.T, a *agent) {
	v := obj(t, ok(t, a.qmp(t, `{"execute":"guest-info"}`)).Return)
	version := str(t, v, "version")
	if version == "" {
		t.Fatal("empty version")
	}
	if a.name == "qemu-ga" {
		// test-qga.c compares with QEMU_VERSION: the binary's own.
		out, err := exec.Command("/usr/sbin/qemu-ga", "-V").Output()
		if err == nil && !strings.HasSuffix(strings.TrimSpace(string(out)), " "+version) {
			t.Fatalf("version %q, qemu-ga -V says %q", version, out)
		}
	}
}

func testNetworkGetInterfaces(t *testing.T, a *agent) {
	l := list(t, ok(t, a.qmp(t, `{"execute":"guest-network-get-interfaces"}`)).Return)
	if len(l) == 0 {
		t.Fatal("no interface")
	}
	hasKeys(t, obj(t, l[0]), "name")
}

func testGetVcpus(t *testing.T, a *agent) {
	l := list(t, ok(t, a.qmp(t, `{"execute":"guest-get-vcpus"}`)).Return)
	if len(l) == 0 {
		t.Fatal("no vCPU")
	}
	hasKeys(t, obj(t, l[0]), "online", "logical-id")
}

func testGetFsinfo(t *testing.T, a *agent) {
	l := list(t, ok(t, a.qmp(t, `{"execute":"guest-get-fsinfo"}`)).Return)
	if len(l) > 0 {
		hasKeys(t, obj(t, l[0]), "name", "mountpoint", "type", "disk")
	}
}

func testGetLoad(t *testing.T, a *agent) {
	v := obj(t, ok(t, a.qmp(t, `{"execute":"guest-get-load"}`)).Return)
	hasKeys(t, v, "load1m", "load5m", "load15m")
	for _, k := range []string{"load1m", "load5m", "load15m"} {
		n, isNum := v[k].(json.Number)
		if f, err := n.Float64(); !isNum || err != nil || f < 0 {
			t.Errorf("%s = %#v, want a number ≥ 0", k, v[k])
		}
	}
}

func testGetMemoryBlockInfo(t *testing.T, a *agent) {
	r := a.qmp(t, `{"execute":"guest-get-memory-block-info"}`)
	// Some systems do not expose memory block info in sysfs.
	if r.Error == nil {
		if size := num(t, obj(t, r.Return), "size"); size <= 0 {
			t.Fatalf("size %d", size)
		}
	}
}

func testGetMemoryBlocks(t *testing.T, a *agent) {
	r := a.qmp(t, `{"execute":"guest-get-memory-blocks"}`)
	if r.Error == nil {
		// Newer versions may return an empty list without error.
		if l := list(t, r.Return); len(l) > 0 {
			hasKeys(t, obj(t, l[0]), "phys-index", "online")
		}
	}
}

// helloworld is test-qga.c's buffer, with its terminating NUL (sizeof).
var helloworld = []byte("Hello World!\n\x00")

func testFileOps(t *testing.T, a *agent) {
	path := filepath.Join(a.dir, "foo")
	enc := base64.StdEncoding.EncodeToString(helloworld)

	// open, write, flush, close
	id := handle(t, ok(t, a.qmp(t, `{"execute":"guest-file-open","arguments":{"path":%q,"mode":"w+"}}`, path)))
	v := obj(t, ok(t, a.qmp(t, `{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":%q}}`, id, enc)).Return)
	if c := num(t, v, "count"); c != int64(len(helloworld)) {
		t.Fatalf("write count %d", c)
	}
	if boolean(t, v, "eof") {
		t.Fatal("write eof")
	}
	ok(t, a.qmp(t, `{"execute":"guest-file-flush","arguments":{"handle":%d}}`, id))
	ok(t, a.qmp(t, `{"execute":"guest-file-close","arguments":{"handle":%d}}`, id))

	// check content
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, helloworld) {
		t.Fatalf("file holds %q, want %q", got, helloworld)
	}

	// open, read
	id = handle(t, ok(t, a.qmp(t, `{"execute":"guest-file-open","arguments":{"path":%q,"mode":"r"}}`, path)))
	v = obj(t, ok(t, a.qmp(t, `{"execute":"guest-file-read","arguments":{"handle":%d}}`, id)).Return)
	if c, eof, b64 := num(t, v, "count"), boolean(t, v, "eof"), str(t, v, "buf-b64"); c != int64(len(helloworld)) || !eof || b64 != enc {
		t.Fatalf("read: count %d eof %v buf-b64 %q", c, eof, b64)
	}

	// read eof
	v = obj(t, ok(t, a.qmp(t, `{"execute":"guest-file-read","arguments":{"handle":%d}}`, id)).Return)
	if c, eof, b64 := num(t, v, "count"), boolean(t, v, "eof"), str(t, v, "buf-b64"); c != 0 || !eof || b64 != "" {
		t.Fatalf("read at eof: count %d eof %v buf-b64 %q", c, eof, b64)
	}

	// seek
	v = obj(t, ok(t, a.qmp(t, `{"execute":"guest-file-seek","arguments":{"handle":%d,"offset":6,"whence":"set"}}`, id)).Return)
	if p, eof := num(t, v, "position"), boolean(t, v, "eof"); p != 6 || eof {
		t.Fatalf("seek: position %d eof %v", p, eof)
	}

	// partial read
	v = obj(t, ok(t, a.qmp(t, `{"execute":"guest-file-read","arguments":{"handle":%d}}`, id)).Return)
	c, eof := num(t, v, "count"), boolean(t, v, "eof")
	dec, err := base64.StdEncoding.DecodeString(str(t, v, "buf-b64"))
	if err != nil || c != int64(len(helloworld)-6) || !eof || !bytes.Equal(dec, helloworld[6:]) {
		t.Fatalf("partial read: count %d eof %v data %q (%v)", c, eof, dec, err)
	}

	ok(t, a.qmp(t, `{"execute":"guest-file-close","arguments":{"handle":%d}}`, id))
}

func testFileWriteRead(t *testing.T, a *agent) {
	path := filepath.Join(a.dir, "foo-write-read")
	enc := base64.StdEncoding.EncodeToString(helloworld)

	id := handle(t, ok(t, a.qmp(t, `{"execute":"guest-file-open","arguments":{"path":%q,"mode":"w+"}}`, path)))
	v := obj(t, ok(t, a.qmp(t, `{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":%q}}`, id, enc)).Return)
	if c, eof := num(t, v, "count"), boolean(t, v, "eof"); c != int64(len(helloworld)) || eof {
		t.Fatalf("write: count %d eof %v", c, eof)
	}

	// read (check implicit flush): the position is at the end
	v = obj(t, ok(t, a.qmp(t, `{"execute":"guest-file-read","arguments":{"handle":%d}}`, id)).Return)
	if c, eof, b64 := num(t, v, "count"), boolean(t, v, "eof"), str(t, v, "buf-b64"); c != 0 || !eof || b64 != "" {
		t.Fatalf("read after write: count %d eof %v buf-b64 %q", c, eof, b64)
	}

	// seek to 0
	v = obj(t, ok(t, a.qmp(t, `{"execute":"guest-file-seek","arguments":{"handle":%d,"offset":0,"whence":"set"}}`, id)).Return)
	if p, eof := num(t, v, "position"), boolean(t, v, "eof"); p != 0 || eof {
		t.Fatalf("seek: position %d eof %v", p, eof)
	}

	// read
	v = obj(t, ok(t, a.qmp(t, `{"execute":"guest-file-read","arguments":{"handle":%d}}`, id)).Return)
	if c, eof, b64 := num(t, v, "count"), boolean(t, v, "eof"), str(t, v, "buf-b64"); c != int64(len(helloworld)) || !eof || b64 != enc {
		t.Fatalf("read: count %d eof %v buf-b64 %q", c, eof, b64)
	}

	ok(t, a.qmp(t, `{"execute":"guest-file-close","arguments":{"handle":%d}}`, id))
}

func testGetTime(t *testing.T, a *agent) {
	v := ok(t, a.qmp(t, `{"execute":"guest-get-time"}`))
	n, _ := v.Return.(json.Number)
	if i, err := n.Int64(); err != nil || i <= 0 {
		t.Fatalf("time %v", v.Return)
	}
}

func testID(t *testing.T, a *agent) {
	v := ok(t, a.qmp(t, `{"execute":"guest-ping","id":1}`))
	if n, _ := v.ID.(json.Number); n.String() != "1" {
		t.Fatalf("id %#v, want 1", v.ID)
	}
}

// waitExec polls guest-exec-status for up to 5 s until the process exited.
func waitExec(t *testing.T, a *agent, pid int64) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := obj(t, ok(t, a.qmp(t, `{"execute":"guest-exec-status","arguments":{"pid":%d}}`, pid)).Return)
		if boolean(t, v, "exited") {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d has not exited within 5 s", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func startExec(t *testing.T, a *agent, args string) int64 {
	t.Helper()
	pid := num(t, obj(t, ok(t, a.qmp(t, `{"execute":"guest-exec","arguments":%s}`, args)).Return), "pid")
	if pid <= 0 {
		t.Fatalf("pid %d", pid)
	}
	return pid
}

func decoded(t *testing.T, v map[string]any, key string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(str(t, v, key))
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return string(b)
}

func testGuestExec(t *testing.T, a *agent) {
	// "echo" without a slash: looked up in PATH.
	pid := startExec(t, a, `{"path":"echo","arg":["-n","\" test_str \""],"capture-output":true}`)
	v := waitExec(t, a, pid)
	if c := num(t, v, "exitcode"); c != 0 {
		t.Fatalf("exitcode %d", c)
	}
	if out := decoded(t, v, "out-data"); out != `" test_str "` {
		t.Fatalf("out-data %q", out)
	}
}

const stdoutStderr = `for i in $(seq 4); do if (( $i % 2 )); then echo stdout; else echo stderr 1>&2; fi; done;`

func testGuestExecSeparated(t *testing.T, a *agent, capture string) {
	pid := startExec(t, a, fmt.Sprintf(`{"path":"bash","arg":["-c",%q],"capture-output":%s}`, stdoutStderr, capture))
	v := waitExec(t, a, pid)
	if c := num(t, v, "exitcode"); c != 0 {
		t.Fatalf("exitcode %d", c)
	}
	if out := decoded(t, v, "out-data"); out != "stdout\nstdout\n" {
		t.Fatalf("out-data %q", out)
	}
	if errData := decoded(t, v, "err-data"); errData != "stderr\nstderr\n" {
		t.Fatalf("err-data %q", errData)
	}
}

func testGuestExecMerged(t *testing.T, a *agent) {
	pid := startExec(t, a, fmt.Sprintf(`{"path":"bash","arg":["-c",%q],"capture-output":"merged"}`, stdoutStderr))
	v := waitExec(t, a, pid)
	if c := num(t, v, "exitcode"); c != 0 {
		t.Fatalf("exitcode %d", c)
	}
	if out := decoded(t, v, "out-data"); out != "stdout\nstderr\nstdout\nstderr\n" {
		t.Fatalf("out-data %q", out)
	}
	if e, has := v["err-data"]; has {
		t.Fatalf("err-data %v present with merged output", e)
	}
}

func testGuestExecInvalid(t *testing.T, a *agent) {
	wantError(t, a.qmp(t, `{"execute":"guest-exec","arguments":{"path":"/bin/invalid-cmd42"}}`), "GenericError", "")
	wantError(t, a.qmp(t, `{"execute":"guest-exec-status","arguments":{"pid":0}}`), "GenericError", "")
}

func testGetHostName(t *testing.T, a *agent) {
	v := obj(t, ok(t, a.qmp(t, `{"execute":"guest-get-host-name"}`)).Return)
	hasKeys(t, v, "host-name")
	// Beyond test-qga.c: it is this machine's name.
	if h, err := os.Hostname(); err == nil && str(t, v, "host-name") != h {
		t.Fatalf("host-name %q, want %q", v["host-name"], h)
	}
}

// TestBlockedRPCs: -b blocks the listed commands with CommandNotFound
// "has been disabled"; the others still work.
func TestBlockedRPCs(t *testing.T) {
	for _, s := range []starter{ours, ref} {
		t.Run(s.name, func(t *testing.T) {
			a := s.run(t, "-b", "guest-ping,guest-get-time")
			wantError(t, a.qmp(t, `{"execute":"guest-ping"}`), "CommandNotFound", "has been disabled")
			wantError(t, a.qmp(t, `{"execute":"guest-get-time"}`), "CommandNotFound", "has been disabled")
			ok(t, a.qmp(t, `{"execute":"guest-get-fsinfo"}`))
		})
	}
}

// TestAllowedRPCs: -a allows only the listed commands (qemu-ga 7.2 has no
// -a: guest-agent alone).
func TestAllowedRPCs(t *testing.T) {
	a := ours.run(t, "-a", "guest-ping,guest-get-time")
	ok(t, a.qmp(t, `{"execute":"guest-ping"}`))
	ok(t, a.qmp(t, `{"execute":"guest-get-time"}`))
	wantError(t, a.qmp(t, `{"execute":"guest-get-fsinfo"}`), "CommandNotFound", "has been disabled")
}

// testOSRelease is QEMU's tests/data/test-qga-os-release: shell quoting and
// escapes in double quotes.
const testOSRelease = `ID=qemu-ga-test
NAME=QEMU-GA
PRETTY_NAME="QEMU Guest Agent test"
VERSION="Test 1"
VERSION_ID=1
VARIANT="Unit test \"\'\$\` + "`" + `\\ and \\\\ etc."
VARIANT_ID=unit-test
`

// TestGetOSInfo: QGA_OS_RELEASE in the agent's environment names the
// os-release file read by guest-get-osinfo.
func TestGetOSInfo(t *testing.T) {
	file := filepath.Join(t.TempDir(), "test-qga-os-release")
	if err := os.WriteFile(file, []byte(testOSRelease), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("QGA_OS_RELEASE", file)
	want := map[string]string{
		"id":          "qemu-ga-test",
		"name":        "QEMU-GA",
		"pretty-name": "QEMU Guest Agent test",
		"version":     "Test 1",
		"version-id":  "1",
		"variant":     "Unit test \"'$`\\ and \\\\ etc.",
		"variant-id":  "unit-test",
	}
	for _, s := range []starter{ours, ref} {
		t.Run(s.name, func(t *testing.T) {
			a := s.run(t)
			v := obj(t, ok(t, a.qmp(t, `{"execute":"guest-get-osinfo"}`)).Return)
			for k, w := range want {
				if got := str(t, v, k); got != w {
					t.Errorf("%s = %q, want %q", k, got, w)
				}
			}
		})
	}
}

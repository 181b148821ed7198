package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// linesPluginDir is pluginDir plus the out-of-tree parser of tests/testparser
// (dialect "lines"), built for the tests that need it: the other tests'
// agents do not learn a parser they do not use.
func linesPluginDir(t *testing.T) string {
	t.Helper()
	dir := harness.ShortTempDir(t)
	entries, err := os.ReadDir(pluginDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(pluginDir, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "guest-agent-parser-test"), "../testparser")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the test parser: %v\n%s", err, out)
	}
	return dir
}

// linesReply is the "lines" dialect's reply.
type linesReply struct {
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result"`
	Error  string          `json:"error"`
	Kind   string          `json:"kind"`
}

func readLines(t *testing.T, r *bufio.Reader, n int) []linesReply {
	t.Helper()
	out := make([]linesReply, n)
	for i := range out {
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("reply %d of %d: %v", i+1, n, err)
		}
		if err := json.Unmarshal(line, &out[i]); err != nil {
			t.Fatalf("reply %d is not the dialect's JSON: %q", i+1, line)
		}
	}
	return out
}

// A dialect from outside parser-json, run by the real agent beside qga:
// replies in request order although the commands finish in another order,
// file data from guest-file-read in its own reply shape (the exported blob
// helper), its own local commands and error texts instead of qga's, the
// caller's identity, and the qga channel of the same agent unchanged.
func TestOutOfTreeDialect(t *testing.T) {
	dir := harness.ShortTempDir(t)
	qgaSock, linesSock := filepath.Join(dir, "qga.sock"), filepath.Join(dir, "lines.sock")
	harness.StartAgent(t, harness.Options{PluginDir: linesPluginDir(t), Config: fmt.Sprintf(`
channel "qga" {
  method  = "unix-listen"
  path    = %q
  dialect = "qga"
}
channel "lines" {
  method  = "unix-listen"
  path    = %q
  dialect = "lines"
}
`, qgaSock, linesSock)})
	harness.WaitForPing(t, qgaSock, 10*time.Second)

	// Channels open one after another: the qga one answering does not
	// mean the lines one is up yet.
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if conn, err = net.Dial("unix", linesSock); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)

	// Ordered: a slow plugin command, then a local one and a refusal
	// answered at once, a decode error, and another plugin's command. On
	// qga the local ones would overtake the sleep; here every reply waits
	// for those before it.
	start := time.Now()
	if _, err := conn.Write([]byte(`{"call":"test-sleep","args":{"ms":400}}` + "\n" +
		`{"call":"hello"}` + "\n" +
		`{"call":"guest-ping"}` + "\n" +
		`not json` + "\n" +
		`{"call":"test-caller"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	replies := readLines(t, r, 5)
	if elapsed := time.Since(start); elapsed < 400*time.Millisecond {
		t.Fatalf("five replies after %s: the sleep's reply (400 ms) did not come first", elapsed)
	}
	if !replies[0].OK {
		t.Fatalf("reply 1 (test-sleep): %+v", replies[0])
	}
	if !replies[1].OK || string(replies[1].Result) != `{"dialect":"lines"}` {
		t.Fatalf("reply 2 (hello, a local command of the dialect): %+v", replies[1])
	}
	// qga's core commands are not forced on it, and the refusal is in its
	// own words.
	if replies[2].OK || replies[2].Kind != "unknown" || replies[2].Error != "no such call: guest-ping" {
		t.Fatalf("reply 3 (guest-ping, not a command of this dialect): %+v", replies[2])
	}
	if replies[3].OK || replies[3].Kind != "decode" {
		t.Fatalf("reply 4 (bad JSON, written in its place): %+v", replies[3])
	}
	var caller struct {
		Channel string `json:"channel"`
		Dialect string `json:"dialect"`
		UID     int    `json:"peer-uid"`
		PID     int    `json:"peer-pid"`
	}
	if err := json.Unmarshal(replies[4].Result, &caller); err != nil || caller.Channel != "lines" || caller.Dialect != "lines" ||
		caller.UID != os.Getuid() || caller.PID != os.Getpid() {
		t.Fatalf("reply 5 (test-caller): %s (%v)", replies[4].Result, err)
	}
	// The dialect sees the same caller as the plugin.
	if _, err := conn.Write([]byte(`{"call":"whoami"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	who := readLines(t, r, 1)[0]
	if want := fmt.Sprintf(`{"channel":"lines","gid":%d,"pid":%d,"uid":%d}`, os.Getgid(), os.Getpid(), os.Getuid()); string(who.Result) != want {
		t.Fatalf("whoami: %s, want %s", who.Result, want)
	}

	// File data: guest-file-read's bytes reach this dialect's reply as
	// buf-b64, beside count and eof, through the engine's blob helper.
	data := bytes.Repeat([]byte("out-of-tree dialect \x00\xff"), 20000) // 440 kB: read-ahead on
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(conn, `{"call":"guest-file-open","args":{"path":%q}}`+"\n", path); err != nil {
		t.Fatal(err)
	}
	open := readLines(t, r, 1)[0]
	var handle int
	if !open.OK || json.Unmarshal(open.Result, &handle) != nil {
		t.Fatalf("guest-file-open: %+v", open)
	}
	var got []byte
	for reads := 0; ; reads++ {
		if reads > 100 {
			t.Fatal("no eof after 100 reads")
		}
		// Pipelined, as a copying host would not: three requests at once,
		// their replies in order.
		req := fmt.Sprintf(`{"call":"guest-file-read","args":{"handle":%d,"count":65536}}`+"\n", handle)
		if _, err := conn.Write([]byte(req + req + req)); err != nil {
			t.Fatal(err)
		}
		eof := false
		for _, rd := range readLines(t, r, 3) {
			var res struct {
				Count int    `json:"count"`
				EOF   bool   `json:"eof"`
				Buf   string `json:"buf-b64"`
			}
			if !rd.OK || json.Unmarshal(rd.Result, &res) != nil {
				t.Fatalf("guest-file-read: %+v", rd)
			}
			chunk, err := base64.StdEncoding.DecodeString(res.Buf)
			if err != nil || len(chunk) != res.Count {
				t.Fatalf("guest-file-read: count %d, buf-b64 of %d bytes (%v): %.80s", res.Count, len(chunk), err, rd.Result)
			}
			got = append(got, chunk...)
			eof = eof || res.EOF
		}
		if eof {
			break
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes through the dialect, the file has %d (or they differ)", len(got), len(data))
	}
	if _, err := fmt.Fprintf(conn, `{"call":"guest-file-close","args":{"handle":%d}}`+"\n", handle); err != nil {
		t.Fatal(err)
	}
	if c := readLines(t, r, 1)[0]; !c.OK {
		t.Fatalf("guest-file-close: %+v", c)
	}

	// The qga channel of the same agent keeps qga's core commands, texts
	// and guest-info, without the other dialect's local commands.
	q := harness.MustDial(t, qgaSock)
	call(t, q, `{"execute":"guest-ping"}`+"\n")
	expectError(t, call(t, q, `{"execute":"hello"}`+"\n"), "CommandNotFound", "The command hello has not been found")
	info := call(t, q, `{"execute":"guest-info"}`+"\n")
	for _, want := range []string{`"guest-sync-delimited"`, `"guest-ping"`, `"guest-file-read"`} {
		if !strings.Contains(info, want) {
			t.Fatalf("qga guest-info lacks %s: %s", want, info)
		}
	}
	if strings.Contains(info, `"hello"`) || strings.Contains(info, `"whoami"`) {
		t.Fatalf("qga guest-info lists the lines dialect's local commands: %s", info)
	}
}

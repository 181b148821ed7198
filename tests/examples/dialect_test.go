package examples

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// linesReply is a reply of examples/dialect-lines.
type linesReply struct {
	OK  json.RawMessage `json:"ok"`
	Err *string         `json:"err"`
}

type linesConn struct {
	t *testing.T
	net.Conn
	r *bufio.Reader
}

// send writes requests, one a line, in one write: the agent reads them
// together and runs them side by side.
func (c *linesConn) send(requests ...string) {
	c.t.Helper()
	if _, err := c.Write([]byte(strings.Join(requests, "\n") + "\n")); err != nil {
		c.t.Fatal(err)
	}
}

func (c *linesConn) read() linesReply {
	c.t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("reading a reply: %v", err)
	}
	var r linesReply
	if err := json.Unmarshal(line, &r); err != nil || (r.OK == nil) == (r.Err == nil) {
		c.t.Fatalf("not a lines reply (one of ok, err): %q", line)
	}
	return r
}

func (c *linesConn) call(request string) linesReply {
	c.t.Helper()
	c.send(request)
	return c.read()
}

func (r linesReply) String() string {
	if r.Err != nil {
		return "err: " + *r.Err
	}
	return "ok: " + string(r.OK)
}

func (r linesReply) err() string {
	if r.Err == nil {
		return ""
	}
	return *r.Err
}

// examples/dialect-lines through the agent, on a channel of its own: file
// data from guest-file-read (the engine's blob helper), replies in request
// order although the first command finishes last, its own error replies
// for bad lines in their place, and none of qga's commands forced on it.
func TestDialectLines(t *testing.T) {
	dir := harness.ShortTempDir(t)
	sock := filepath.Join(dir, "lines.sock")
	harness.StartAgent(t, harness.Options{PluginDir: pluginDir, Config: fmt.Sprintf(`
channel "lines" {
  method  = "unix-listen"
  path    = %q
  dialect = "lines"
}
limits {
  max_request_bytes = 1048576
}
`, sock)})
	var c *linesConn
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			c = &linesConn{t: t, Conn: conn, r: bufio.NewReaderSize(conn, 1<<20)}
			t.Cleanup(func() { conn.Close() })
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lines channel did not open: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if r := c.call(`{"cmd":"guest-hello","args":{"name":"lines"}}`); string(r.OK) != `{"greeting":"hello, lines"}` {
		t.Fatalf("guest-hello: %v", r)
	}
	for _, qga := range []string{"guest-ping", "guest-info", "guest-sync"} {
		if r := c.call(`{"cmd":"` + qga + `"}`); r.err() != "unknown command "+qga {
			t.Errorf("%s on a lines channel: want unknown, got ok=%s err=%q", qga, r.OK, r.err())
		}
	}

	// guest-file-read: the data is in the reply, base64 in buf-b64.
	data := make([]byte, 300<<10)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "data")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := c.call(fmt.Sprintf(`{"cmd":"guest-file-open","args":{"path":%q,"mode":"r"}}`, path))
	var handle int
	if err := json.Unmarshal(r.OK, &handle); err != nil {
		t.Fatalf("guest-file-open: %v", r)
	}
	var got []byte
	for {
		r := c.call(fmt.Sprintf(`{"cmd":"guest-file-read","args":{"handle":%d,"count":65536}}`, handle))
		var read struct {
			Buf   *string `json:"buf-b64"`
			Count int     `json:"count"`
			EOF   bool    `json:"eof"`
		}
		if err := json.Unmarshal(r.OK, &read); err != nil || read.Buf == nil {
			t.Fatalf("guest-file-read without its data: ok=%.200s err=%q", r.OK, r.err())
		}
		chunk, err := base64.StdEncoding.DecodeString(*read.Buf)
		if err != nil || len(chunk) != read.Count {
			t.Fatalf("guest-file-read: buf-b64 of %d bytes (%v) for count %d", len(chunk), err, read.Count)
		}
		got = append(got, chunk...)
		if read.EOF {
			break
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes back, not the file's %d", len(got), len(data))
	}
	c.call(fmt.Sprintf(`{"cmd":"guest-file-close","args":{"handle":%d}}`, handle))

	// Ordered replies: test-sleep (cmd-test) finishes ≈ 400 ms after the
	// commands of other plugins sent behind it, a bad line and an unknown
	// command; every reply comes in its request's place all the same.
	start := time.Now()
	c.send(`{"cmd":"test-sleep","args":{"ms":400}}`,
		`{"cmd":"guest-hello","args":{"name":"second"}}`,
		`not json`,
		`{"cmd":"no-such-command"}`,
		`{"cmd":"guest-hello","args":{}}`,
		`{"cmd":"guest-hello","args":{"name":"last"}}`)
	replies := []linesReply{c.read(), c.read(), c.read(), c.read(), c.read(), c.read()}
	if elapsed := time.Since(start); elapsed < 400*time.Millisecond {
		t.Fatalf("six replies within %s: test-sleep did not sleep", elapsed)
	}
	if !strings.Contains(string(replies[0].OK), `"pid"`) ||
		string(replies[1].OK) != `{"greeting":"hello, second"}` ||
		!strings.HasPrefix(replies[2].err(), `a request is {"cmd": NAME`) ||
		replies[3].err() != "unknown command no-such-command" ||
		replies[4].err() != "Parameter 'name' is missing" ||
		string(replies[5].OK) != `{"greeting":"hello, last"}` {
		t.Fatalf("replies out of request order or wrong: %v", replies)
	}

	// A line over max_request_bytes gets its error and the session goes on.
	big := `{"cmd":"guest-hello","args":{"name":"` + strings.Repeat("x", 2<<20) + `"}}`
	c.send(big, `{"cmd":"guest-hello","args":{"name":"after"}}`)
	if r := c.read(); r.err() != "request over 1048576 bytes" {
		t.Fatalf("a 2 MiB line: %v", r)
	}
	if r := c.read(); string(r.OK) != `{"greeting":"hello, after"}` {
		t.Fatalf("after the long line: %v", r)
	}
}

// The three examples together, nothing of the agent's own in the path but
// the engine: the lines dialect over the TCP exchange, running the command
// plugin's guest-hello.
func TestExamplesTogether(t *testing.T) {
	port := freePort(t)
	harness.StartAgent(t, harness.Options{PluginDir: pluginDir, Config: fmt.Sprintf(`
channel "lines-tcp" {
  method  = "tcp-listen"
  path    = "127.0.0.1:%d"
  dialect = "lines"
}
`, port)})
	var c *linesConn
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c = &linesConn{t: t, Conn: conn, r: bufio.NewReader(conn)}
			t.Cleanup(func() { conn.Close() })
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lines-tcp channel did not open: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.send(`{"cmd":"guest-hello","args":{"name":"one"}}`, `{"cmd":"guest-hello","args":{"name":"two"}}`)
	if one, two := c.read(), c.read(); string(one.OK) != `{"greeting":"hello, one"}` || string(two.OK) != `{"greeting":"hello, two"}` {
		t.Fatalf("guest-hello over lines over TCP: %v, %v", one, two)
	}
}

package negotiator

// The peer of these tests is written from the protocol text alone (issue
// 13): an ASCII decimal length, "\n", that many bytes of JSON. It shares no
// code with the package.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

type peer struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func newPeer(t *testing.T, conn net.Conn) *peer {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	return &peer{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// send writes raw bytes.
func (p *peer) send(raw string) {
	p.t.Helper()
	if _, err := io.WriteString(p.conn, raw); err != nil {
		p.t.Fatalf("send: %v", err)
	}
}

// request sends one framed JSON value.
func (p *peer) request(v any) {
	p.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		p.t.Fatal(err)
	}
	p.send(fmt.Sprintf("%d\n%s", len(b), b))
}

// frame reads one raw frame body within 10 s.
func (p *peer) frame() string {
	p.t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read the length line: %v", err)
	}
	n, err := strconv.Atoi(strings.TrimSuffix(line, "\n"))
	if err != nil {
		p.t.Fatalf("length line %q: %v", line, err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(p.r, body); err != nil {
		p.t.Fatalf("read %d bytes: %v", n, err)
	}
	return string(body)
}

type peerReply struct {
	Success bool            `json:"success"`
	Result  json.RawMessage `json:"result"`
	Error   string          `json:"error"`
}

// reply reads one reply; its bytes must all be ASCII.
func (p *peer) reply() peerReply {
	p.t.Helper()
	body := p.frame()
	for i := 0; i < len(body); i++ {
		if body[i] >= 0x80 {
			p.t.Fatalf("reply has a non-ASCII byte at %d: %.200q", i, body)
		}
	}
	var r peerReply
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		p.t.Fatalf("reply %.200q: %v", body, err)
	}
	return r
}

func (p *peer) result(v any) {
	p.t.Helper()
	r := p.reply()
	if !r.Success {
		p.t.Fatalf("error reply %q, want success", r.Error)
	}
	if err := json.Unmarshal(r.Result, v); err != nil {
		p.t.Fatalf("result %.200s: %v", r.Result, err)
	}
}

func (p *peer) failure(contains ...string) string {
	p.t.Helper()
	r := p.reply()
	if r.Success {
		p.t.Fatalf("success %.200s, want an error containing %q", r.Result, contains)
	}
	for _, c := range contains {
		if !strings.Contains(r.Error, c) {
			p.t.Fatalf("error %q does not contain %q", r.Error, c)
		}
	}
	return r.Error
}

// sendFrame frames a JSON text as the protocol says.
func (p *peer) sendFrame(body string) {
	p.t.Helper()
	p.send(strconv.Itoa(len(body)) + "\n" + body)
}

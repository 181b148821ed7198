package e2e

import (
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// agentRSSKiB sums the resident memory of the agent and all its plugins.
func agentRSSKiB(t *testing.T, a *harness.Agent) int {
	t.Helper()
	total := rssKiB(t, a.Cmd.Process.Pid)
	for _, pid := range harness.Children(a.Cmd.Process.Pid) {
		if harness.Alive(pid) {
			total += rssKiB(t, pid)
		}
	}
	return total
}

// waitMemoryBack waits until pid's RSS is within slack of idle, and fails
// after within.
func waitMemoryBack(t *testing.T, what string, rss func() int, idle, slack int, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		now := rss()
		if now <= idle+slack {
			return now
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: RSS %d KiB %s later, idle was %d KiB", what, now, within, idle)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A peer that never reads its replies: the requests it keeps sending queue
// behind the first reply, each with its buffer. They are bounded by the
// session's memory budget, and once the peer has read nothing for
// write_timeout its session ends and the memory goes back (was: 16 ->
// 1,395 MiB with 60 x 16 MiB writes behind one unread 48 MiB read).
func TestUnreadReplyIsBounded(t *testing.T) {
	a, sock := startAgentConfig(t, `limits {
  session_memory_max = 100000000
  write_timeout      = "3s"
}`)
	parser := onePluginProc(t, a.Cmd.Process.Pid, "parser-json")
	idle := rssKiB(t, parser)
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The socket's buffers are small next to the reply: it stays unread.
	if _, err := fmt.Fprintf(conn, `{"execute":"test-blob","arguments":{"size":%d}}`+"\n", 48<<20); err != nil {
		t.Fatal(err)
	}
	chunk := base64.StdEncoding.EncodeToString(make([]byte, 16<<20))
	req := []byte(`{"execute":"test-blob","arguments":{"in-b64":"` + chunk + `"}}` + "\n")
	sent := 0
	var peak int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 60; i++ {
			_ = conn.SetWriteDeadline(time.Now().Add(4 * time.Second))
			if _, err := conn.Write(req); err != nil {
				return // the agent stopped reading: the budget holds
			}
			sent++
		}
	}()
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		peak = max(peak, rssKiB(t, parser))
	}
	wg.Wait()
	t.Logf("parser RSS idle %d KiB, peak %d KiB while a peer sent %d x 16 MiB behind an unread 48 MiB reply", idle, peak, sent)
	if sent >= 60 {
		t.Fatal("the agent read all 60 requests although their replies could not be written")
	}
	// Budget 100 MB, plus the reply being encoded, plus the runtime.
	if peak > idle+300<<10 {
		t.Fatalf("parser RSS rose by %d MiB: not bounded by the 100 MB session budget", (peak-idle)>>10)
	}
	// The peer has read nothing for write_timeout: the session is closed.
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the stalled session was not closed: %v", err)
	}
	waitLog(t, a, "read nothing of a reply for write_timeout", "the log does not say why the session was closed")
	now := waitMemoryBack(t, "parser after the stalled session", func() int { return rssKiB(t, parser) }, idle, 8<<10, 15*time.Second)
	t.Logf("parser RSS back to %d KiB", now)
	c := harness.MustDial(t, sock)
	call(t, c, `{"execute":"guest-ping"}`+"\n")
}

// Peers that stop in the middle of large requests: the channel's budget
// bounds what they hold together, request_idle_timeout discards the partial
// requests, and the memory goes back (was: eight unfinished 60 MiB requests,
// 567 MiB, still held 12 s after they closed).
func TestUnfinishedRequestsAreBounded(t *testing.T) {
	a, sock := startAgentConfig(t, `limits {
  channel_memory_max   = 200000000
  request_idle_timeout = "2s"
}`)
	parser := onePluginProc(t, a.Cmd.Process.Pid, "parser-json")
	idle := rssKiB(t, parser)
	part := []byte(`{"execute":"test-blob","arguments":{"in-b64":"` + strings.Repeat("A", 60<<20))
	var conns []net.Conn
	var wg sync.WaitGroup
	var mu sync.Mutex
	written := 0
	for i := 0; i < 8; i++ {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			n, _ := conn.Write(part)
			mu.Lock()
			written += n
			mu.Unlock()
		}()
	}
	peak := 0
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		peak = max(peak, rssKiB(t, parser))
	}
	t.Logf("parser RSS idle %d KiB, peak %d KiB with 8 unfinished 60 MiB requests", idle, peak)
	if peak > idle+300<<10 {
		t.Fatalf("parser RSS rose by %d MiB: not bounded by the 200 MB channel budget", (peak-idle)>>10)
	}
	// Each session gets the error once its request has been idle.
	for i, conn := range conns {
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		line, err := readLine(conn)
		if err != nil || !strings.Contains(line, "request discarded: nothing more of it arrived for 2s (limit request_idle_timeout)") {
			t.Fatalf("session %d: %q %v", i, line, err)
		}
	}
	wg.Wait()
	for _, conn := range conns {
		conn.Close()
	}
	now := waitMemoryBack(t, "parser after the unfinished requests", func() int { return rssKiB(t, parser) }, idle, 8<<10, 15*time.Second)
	t.Logf("parser RSS back to %d KiB (%d MiB were written into the sessions)", now, written>>20)
}

func readLine(conn net.Conn) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := conn.Read(one); err != nil {
			return string(b), err
		}
		b = append(b, one[0])
		if one[0] == '\n' {
			return string(b), nil
		}
	}
}

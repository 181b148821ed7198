package examples

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// idleSessions is how many connections stay open on the TCP channel while
// the parser's threads are counted.
const idleSessions = 50

// examples/exchange-tcp through the agent, as the qga channel's exchange:
// its sessions reach the parser with non-blocking descriptors (so 50 idle
// ones cost the parser no thread), they end when the exchange is
// SIGKILLed, and the channel serves again once the supervisor restarted it.
func TestExchangeTCP(t *testing.T) {
	port := freePort(t)
	a := harness.StartAgent(t, harness.Options{PluginDir: pluginDir, Config: fmt.Sprintf(`
channel "qga" {
  method  = "tcp-listen"
  path    = "127.0.0.1:%d"
  dialect = "qga"
}
`, port)})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	first := dialPing(t, addr, 10*time.Second)
	first.Close()

	agentPID := a.Cmd.Process.Pid
	parser := childNamed(agentPID, "guest-agent-parser-json")
	exchange := childNamed(agentPID, "guest-agent-exchange-tcp")
	if parser == 0 || exchange == 0 {
		t.Fatalf("parser pid %d, exchange pid %d: both must run", parser, exchange)
	}
	before := threads(t, parser)

	conns := make([]*tcpConn, idleSessions)
	clientPorts := map[int]bool{}
	for i := range conns {
		conns[i] = dialPing(t, addr, 5*time.Second)
		clientPorts[conns[i].LocalAddr().(*net.TCPAddr).Port] = true
	}
	// Every session is in the parser, non-blocking; the exchange kept no
	// copy of any.
	held := tcpSockets(t, parser, port)
	seen := 0
	for _, s := range held {
		if !clientPorts[s.remotePort] {
			continue
		}
		seen++
		if !nonBlocking(t, parser, s.fd) {
			t.Errorf("parser descriptor %s of the session from port %d is blocking", s.fd, s.remotePort)
		}
	}
	if seen != idleSessions {
		t.Fatalf("the parser holds %d of the %d sessions", seen, idleSessions)
	}
	for _, s := range tcpSockets(t, exchange, port) {
		if s.remotePort != 0 {
			t.Errorf("the exchange still holds the session from port %d (descriptor %s)", s.remotePort, s.fd)
		}
	}
	time.Sleep(200 * time.Millisecond) // a thread parked in read(2) would show by now
	after := threads(t, parser)
	t.Logf("parser threads: %d before, %d with %d idle sessions", before, after, idleSessions)
	// A blocking descriptor holds a thread per idle session; the netpoller
	// none. The runtime may start a thread or two of its own meanwhile.
	if after > before+3 {
		t.Fatalf("parser threads went from %d to %d with %d idle sessions", before, after, idleSessions)
	}

	// The exchange dies: its sessions end in the parser.
	if err := syscall.Kill(exchange, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.R.ReadByte(); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("session %d after the exchange's SIGKILL: want EOF, got %v", i, err)
		}
		c.Close()
	}
	if left := tcpSockets(t, parser, port); len(left) != 0 {
		t.Fatalf("the parser still holds %d sockets of the channel: %+v", len(left), left)
	}

	// The supervisor restarts it and reopens the channel; sessions come back.
	again := dialPing(t, addr, 15*time.Second)
	again.Close()
	restarted := childNamed(agentPID, "guest-agent-exchange-tcp")
	if restarted == 0 || restarted == exchange {
		t.Fatalf("exchange pid %d after the restart (was %d)", restarted, exchange)
	}
	// Logged once every channel of the exchange is open again, which may
	// be just after the first connection was served.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(a.Log.String(), "channels restored after plugin restart"); {
		if time.Now().After(deadline) {
			t.Fatalf("the supervisor did not log the channel's recovery")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := childNamed(agentPID, "guest-agent-parser-json"); p != parser {
		t.Fatalf("the parser changed (%d, was %d): only the exchange was to restart", p, parser)
	}
}

// tcpConn is a qga connection over TCP.
type tcpConn struct {
	*net.TCPConn
	R *bufio.Reader
}

// dialPing connects to addr and pings until the agent answers, within d.
func dialPing(t *testing.T, addr string, d time.Duration) *tcpConn {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			tc := &tcpConn{TCPConn: c.(*net.TCPConn), R: bufio.NewReader(c)}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = io.WriteString(c, `{"execute":"guest-ping"}`+"\n")
			var line string
			if err == nil {
				line, err = tc.R.ReadString('\n')
			}
			if err == nil && strings.TrimSpace(line) == `{"return": {}}` {
				_ = c.SetDeadline(time.Time{})
				return tc
			}
			if err == nil {
				err = fmt.Errorf("reply %q", line)
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no guest-ping answer on %s within %s: %v", addr, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePort is a loopback port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

package negotiator

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeGuest answers each request of the client the way the protocol text
// says, from raw bytes, and records what it was asked.
func TestClient(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	asked := make(chan string, 10)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p := newPeer(t, c)
		asked <- p.frame()
		p.sendFrame(`{"success": true, "result": ["a", "\u00e9"]}`)
		asked <- p.frame()
		p.sendFrame(`{"success": false, "error": "no such thing"}`)
		asked <- p.frame()
		// No reply: the client times out.
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := NewClient(conn, 500*time.Millisecond)
	ctx := context.Background()
	names, err := c.ListCommands(ctx)
	if err != nil || strings.Join(names, ",") != "a,é" {
		t.Fatalf("list: %v %v", names, err)
	}
	if got := <-asked; got != `{"method":"list_commands","args":[],"kw":{}}` {
		t.Fatalf("request on the wire: %s", got)
	}
	in := "dätä"
	_, err = c.Execute(ctx, []string{"x", "ü"}, &in)
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "no such thing" {
		t.Fatalf("remote error: %v", err)
	}
	if got := <-asked; got != `{"method":"execute","args":["x","\u00fc"],"kw":{"input":"d\u00e4t\u00e4"}}` {
		t.Fatalf("request on the wire: %s", got)
	}
	start := time.Now()
	if _, err := c.ListCommands(ctx); err == nil || !strings.Contains(err.Error(), "timeout") || time.Since(start) > 5*time.Second {
		t.Fatalf("no reply: %v after %s", err, time.Since(start))
	}
	<-asked
	if _, err := c.ListCommands(ctx); err == nil || !strings.Contains(err.Error(), "unusable") {
		t.Fatalf("after a timeout: %v", err)
	}
}

package main

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/session"
)

// By default unix-listen hands the listening socket itself to the parser:
// one listener event, mode applied, and connections accepted on the handed
// descriptor; the exchange keeps nothing.
func TestUnixListenHandsOverTheListener(t *testing.T) {
	p := newParserSide(t)
	e := &Exchange{}
	path := filepath.Join(t.TempDir(), "qga.sock")
	ch := channel(t, methodUnix, path, map[string]any{"hand_over_listener": true, "socket_mode": "0660", "max_connections": 3})
	resolved, stop := open(t, e, p, ch)
	defer stop()
	if resolved != path {
		t.Fatalf("resolved %q", resolved)
	}
	r := p.nextOf(session.EventHandoff, 5*time.Second)
	if r.ev.Kind != session.KindListener || r.ev.MaxConnections != 3 || r.ev.ListenerPath != path || r.f == nil {
		t.Fatalf("handoff %+v", r.ev)
	}
	if !p.out.HandedOver() {
		t.Fatal("the outbox does not report the hand-over")
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	ln, err := net.FileListener(r.f)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := net.Dial("unix", path); err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := conn.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q %v", buf, err)
	}
	conn.Close()
	p.none(300 * time.Millisecond) // no per-connection handoffs from the exchange
}

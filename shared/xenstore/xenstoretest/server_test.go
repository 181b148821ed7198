package xenstoretest_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/xenstore"
	"github.com/guest-agent/guest-agent/shared/xenstore/xenstoretest"
)

// roundTrip sends one raw request on nc and returns the next non-event
// message.
func roundTrip(t *testing.T, nc net.Conn, m xenstore.Message) xenstore.Message {
	t.Helper()
	if err := xenstore.WriteMessage(nc, m); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		r, err := xenstore.ReadMessage(nc)
		if err != nil {
			t.Fatal(err)
		}
		if r.Type != xenstore.OpWatchEvent {
			return r
		}
	}
}

func TestHelpersAndSpuriousEvents(t *testing.T) {
	s := xenstoretest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := xenstore.Dial(ctx, s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.Watch(ctx, "/h", "")
	if err != nil {
		t.Fatal(err)
	}
	next := func() string {
		select {
		case ev := <-w.Events():
			return ev.Path
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
			return ""
		}
	}
	if p := next(); p != "/h" {
		t.Fatalf("initial %q", p)
	}
	if err := s.Write("/h/x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if p := next(); p != "/h/x" {
		t.Fatalf("after Write %q", p)
	}
	s.FireWatch("/h/spurious")
	if p := next(); p != "/h/spurious" {
		t.Fatalf("after FireWatch %q", p)
	}
	if names, ok := s.Directory("/h"); !ok || !slices.Equal(names, []string{"x"}) {
		t.Fatalf("Directory = %q %v", names, ok)
	}
	if err := s.Rm("/h"); err != nil {
		t.Fatal(err)
	}
	if p := next(); p != "/h" {
		t.Fatalf("after Rm %q", p)
	}
	if _, ok := s.Read("/h/x"); ok {
		t.Fatal("Rm left the child")
	}
	// Invalid paths are refused, not a panic.
	if _, ok := s.Read(""); ok {
		t.Fatal("Read of empty path")
	}
	if err := s.Write("no-slash", nil); !errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("Write of relative path: %v", err)
	}
}

func TestRawProtocol(t *testing.T) {
	s := xenstoretest.NewServer(t)
	a, err := net.Dial("unix", s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.Dial("unix", s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	// TRANSACTION_START's reply is the id as a NUL-terminated decimal.
	r := roundTrip(t, a, xenstore.Message{Type: xenstore.OpTransactionStart, ReqID: 9, Payload: []byte{0}})
	if r.Type != xenstore.OpTransactionStart || r.ReqID != 9 || string(r.Payload) != "1\x00" {
		t.Fatalf("TRANSACTION_START reply %+v", r)
	}
	// Another connection cannot use it.
	r = roundTrip(t, b, xenstore.Message{Type: xenstore.OpRead, ReqID: 3, TxID: 1, Payload: []byte("/\x00")})
	if r.Type != xenstore.OpError || string(r.Payload) != "ENOENT\x00" || r.ReqID != 3 || r.TxID != 1 {
		t.Fatalf("foreign transaction: %+v", r)
	}
	// TRANSACTION_START must not carry a tx_id.
	r = roundTrip(t, a, xenstore.Message{Type: xenstore.OpTransactionStart, ReqID: 4, TxID: 1, Payload: []byte{0}})
	if r.Type != xenstore.OpError || string(r.Payload) != "EINVAL\x00" {
		t.Fatalf("nested start: %+v", r)
	}
	// WRITE without the NUL after the path is malformed.
	r = roundTrip(t, a, xenstore.Message{Type: xenstore.OpWrite, ReqID: 5, Payload: []byte("/x")})
	if r.Type != xenstore.OpError || string(r.Payload) != "EINVAL\x00" {
		t.Fatalf("malformed write: %+v", r)
	}
	// Success replies to MKDIR are "OK".
	r = roundTrip(t, a, xenstore.Message{Type: xenstore.OpMkdir, ReqID: 6, Payload: []byte("/m\x00")})
	if r.Type != xenstore.OpMkdir || string(r.Payload) != "OK\x00" {
		t.Fatalf("mkdir: %+v", r)
	}
	// Closing a connection discards its transactions.
	if n := s.OpenTransactions(); n != 1 {
		t.Fatalf("%d open transactions", n)
	}
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for s.OpenTransactions() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("transaction survived its connection")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

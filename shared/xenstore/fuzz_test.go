package xenstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/xenstore"
)

// Fuzz targets for the client side of the XenStore wire protocol: what a
// hostile (or broken) xenstored can send to the guest's agent.

// FuzzReadMessage: any byte stream reads as messages or an error, never a
// panic; a header announcing more than the limit is refused before any of
// its payload is read or allocated; every message read marshals back to
// the bytes it came from.
func FuzzReadMessage(f *testing.F) {
	msg := func(op xenstore.Op, req, tx uint32, payload string) []byte {
		b, err := xenstore.Message{Type: op, ReqID: req, TxID: tx, Payload: []byte(payload)}.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	header := func(n uint32) []byte {
		h := make([]byte, xenstore.HeaderSize)
		binary.LittleEndian.PutUint32(h[12:], n)
		return h
	}
	for _, s := range [][]byte{
		nil,
		msg(xenstore.OpRead, 1, 0, "value"),
		bytes.Join([][]byte{msg(xenstore.OpWatchEvent, 0, 0, "data/host/1\x00tok\x00"), msg(xenstore.OpWrite, 2, 5, "OK\x00")}, nil),
		msg(xenstore.OpError, 3, 0, "ENOENT\x00"),
		msg(xenstore.OpDirectory, 4, 0, strings.Repeat("child\x00", 600)),
		header(xenstore.PayloadMax + 1),
		header(0xffffffff),
		msg(xenstore.OpRead, 1, 0, "value")[:10],
		msg(xenstore.OpRead, 1, 0, "value")[:18],
	} {
		f.Add(s, uint32(xenstore.PayloadMax))
		f.Add(s, uint32(xenstore.MaxReplyPayload))
	}
	f.Fuzz(func(t *testing.T, stream []byte, limit uint32) {
		limit %= xenstore.MaxReplyPayload + 1
		r := bytes.NewReader(stream)
		for {
			off := len(stream) - r.Len()
			var declared uint32
			if r.Len() >= xenstore.HeaderSize {
				declared = binary.LittleEndian.Uint32(stream[off+12:])
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			m, err := xenstore.ReadMessageMax(r, limit)
			runtime.ReadMemStats(&after)
			read := len(stream) - r.Len() - off
			if got := after.TotalAlloc - before.TotalAlloc; got > uint64(min(declared, limit))+64<<10 {
				t.Fatalf("%d bytes allocated for a message declaring %d (limit %d)", got, declared, limit)
			}
			if err != nil {
				if declared > limit && !errors.Is(err, xenstore.ErrPayloadTooLarge) {
					t.Fatalf("a header declaring %d bytes (limit %d): %v, want ErrPayloadTooLarge", declared, limit, err)
				}
				if errors.Is(err, xenstore.ErrPayloadTooLarge) && read != xenstore.HeaderSize {
					t.Fatalf("refused message: %d bytes read, want the header only", read)
				}
				if read == 0 && err != io.EOF {
					t.Fatalf("clean end: %v, want io.EOF", err)
				}
				return
			}
			if declared > limit {
				t.Fatalf("a payload of %d bytes accepted over the limit %d", declared, limit)
			}
			if len(m.Payload) <= xenstore.PayloadMax {
				b, err := m.MarshalBinary()
				if err != nil || !bytes.Equal(b, stream[off:off+read]) {
					t.Fatalf("message %+v marshals to % x, read from % x (%v)", m, b, stream[off:off+read], err)
				}
			}
		}
	})
}

// FuzzStrings: SplitStrings and JoinStrings are inverse where the protocol
// defines them: a payload of NUL-terminated strings, and strings without
// NULs.
func FuzzStrings(f *testing.F) {
	for _, s := range []string{"", "\x00", "a\x00b\x00", "a\x00b", "p\x00\x00", "\x00\x00\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		parts := xenstore.SplitStrings(p)
		want := p
		if len(p) > 0 && p[len(p)-1] != 0 {
			want = append(slices.Clip(p), 0) // the final NUL is optional
		}
		if got := xenstore.JoinStrings(parts...); !bytes.Equal(got, want) {
			t.Fatalf("JoinStrings(SplitStrings(%q)) = %q", p, got)
		}
		for _, s := range parts {
			if strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("SplitStrings(%q) gave %q", p, parts)
			}
		}
		if back := xenstore.SplitStrings(xenstore.JoinStrings(parts...)); !slices.Equal(back, parts) {
			t.Fatalf("SplitStrings(JoinStrings(%q)) = %q", parts, back)
		}
	})
}

// Script ops of the hostile xenstored in FuzzClientHostile: each request is
// answered by the ops that follow in the script, until one of them ends it.
const (
	opPlausible = iota // the answer a real xenstored could give (ends the request)
	opEcho             // same type, payload from the script (ends)
	opError            // XS_ERROR with an errno from the script (ends)
	opWrongType        // any type, payload from the script (ends)
	opWrongID          // a reply for another req_id, then go on
	opEvent            // a watch event, for the client's token or not, then go on
	opGarbage          // raw bytes from the script, then go on
	opClose            // hang up
	numOps
)

var errnos = []string{"ENOENT", "EAGAIN", "E2BIG", "EINVAL", "EACCES", "EEXIST", "EWHATEVER", ""}

// script is the fuzz input read as the server's moves.
type script struct{ b []byte }

func (s *script) byte() (byte, bool) {
	if len(s.b) == 0 {
		return 0, false
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c, true
}

// bytes takes a length byte and that many bytes (fewer at the end).
func (s *script) bytes() []byte {
	n, _ := s.byte()
	n = min(n, byte(len(s.b)))
	p := s.b[:n]
	s.b = s.b[n:]
	return p
}

// plausible is what a real xenstored would answer to m.
func plausible(m xenstore.Message, token string) []xenstore.Message {
	reply := func(p string) xenstore.Message {
		return xenstore.Message{Type: m.Type, ReqID: m.ReqID, TxID: m.TxID, Payload: []byte(p)}
	}
	switch m.Type {
	case xenstore.OpRead:
		return []xenstore.Message{reply(`{"name":"version","value":"agent"}`)}
	case xenstore.OpDirectory:
		return []xenstore.Message{reply("1\x002\x00")}
	case xenstore.OpDirectoryPart:
		return []xenstore.Message{reply("7\x00a\x00b\x00\x00")}
	case xenstore.OpTransactionStart:
		return []xenstore.Message{reply("12\x00")}
	case xenstore.OpGetDomainPath:
		return []xenstore.Message{reply("/local/domain/7\x00")}
	case xenstore.OpWatch:
		// The first event of a watch fires at once.
		path, _, _ := strings.Cut(string(m.Payload), "\x00")
		return []xenstore.Message{
			{Type: xenstore.OpWatchEvent, Payload: xenstore.JoinStrings(path, token)},
			reply("OK\x00"),
		}
	}
	return []xenstore.Message{reply("OK\x00")}
}

// serveScript plays xenstored on conn by the script, then hangs up. When
// no request comes for a moment (the client still waits for an answer the
// script garbled or never gave), the next moves answer the last request
// again: late answers, duplicates, and in the end the hang-up.
func serveScript(conn net.Conn, s *script, token string) {
	defer conn.Close()
	requests := make(chan xenstore.Message)
	go func() {
		defer close(requests)
		for {
			m, err := xenstore.ReadMessage(conn)
			if err != nil {
				return
			}
			requests <- m
		}
	}()
	defer func() {
		conn.Close()
		for range requests { // let the reader finish
		}
	}()
	var m xenstore.Message
	for len(s.b) > 0 {
		select {
		case req, ok := <-requests:
			if !ok {
				return
			}
			m = req
		case <-time.After(20 * time.Millisecond):
		}
	answer:
		for {
			op, ok := s.byte()
			if !ok {
				return
			}
			var out []xenstore.Message
			ends := true
			switch op % numOps {
			case opPlausible:
				out = plausible(m, token)
			case opEcho:
				out = []xenstore.Message{{Type: m.Type, ReqID: m.ReqID, TxID: m.TxID, Payload: s.bytes()}}
			case opError:
				i, _ := s.byte()
				out = []xenstore.Message{{Type: xenstore.OpError, ReqID: m.ReqID, Payload: xenstore.JoinStrings(errnos[int(i)%len(errnos)])}}
			case opWrongType:
				t, _ := s.byte()
				out = []xenstore.Message{{Type: xenstore.Op(t % 24), ReqID: m.ReqID, Payload: s.bytes()}}
			case opWrongID:
				d, _ := s.byte()
				out, ends = []xenstore.Message{{Type: m.Type, ReqID: m.ReqID + 1 + uint32(d), Payload: s.bytes()}}, false
			case opEvent:
				tok := token
				if k, _ := s.byte(); k%2 == 1 {
					tok = string(s.bytes())
				}
				out, ends = []xenstore.Message{{Type: xenstore.OpWatchEvent, Payload: append(append(s.bytes(), 0), tok...)}}, false
			case opGarbage:
				if _, err := conn.Write(s.bytes()); err != nil {
					return
				}
				continue
			case opClose:
				return
			}
			for _, o := range out {
				if err := xenstore.WriteMessage(conn, o); err != nil {
					return
				}
			}
			if ends {
				break answer
			}
		}
	}
}

// FuzzClientHostile: a xenstored answering by the script — plausible
// answers, errors, wrong types and ids, stray events, garbage, a hang-up —
// never makes the client panic or hang: every call returns, listings hold
// no empty names, events reach only the watch whose token they carry, and
// once the server hangs up the client is done, its calls fail with
// ErrDisconnected and the watch's channel closes.
func FuzzClientHostile(f *testing.F) {
	all := func(op byte, n int) []byte { return bytes.Repeat([]byte{op}, n) }
	f.Add(all(opPlausible, 64))
	f.Add(append(all(opPlausible, 3), opError, 1, opPlausible, opPlausible, opError, 2, opPlausible))
	f.Add([]byte{opPlausible, opEvent, 0, 3, 'a', '/', 'b', opWrongID, 0, 2, 'h', 'i', opPlausible, opEcho, 5, 'v', 'a', 'l', 'u', 'e'})
	f.Add([]byte{opPlausible, opEvent, 1, 3, 'x', 'y', 'z', 1, '/', opPlausible, opGarbage, 16, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{opPlausible, opPlausible, opError, 2, opWrongType, 2, 0, opEcho, 0, opWrongType, 16, 7, 'E', 'N', 'O', 'E', 'N', 'T', 0})
	f.Add([]byte{opPlausible, opPlausible, opError, 2, opEcho, 4, '1', 0, 'a', 0, opEcho, 4, '2', 0, 'b', 0, opEcho, 2, '2', 0})
	f.Add([]byte{opPlausible, opPlausible, opPlausible, opPlausible, opError, 1, opError, 1, opPlausible, opPlausible, opPlausible, opPlausible})
	f.Add([]byte{opPlausible, opClose})
	f.Add([]byte{opGarbage, 4, 1, 2, 3})
	f.Fuzz(func(t *testing.T, moves []byte) {
		const token = "guest-agent-nova"
		clientEnd, serverEnd := net.Pipe()
		served := make(chan struct{})
		go func() {
			serveScript(serverEnd, &script{b: moves}, token)
			close(served)
		}()
		c := xenstore.NewClient(clientEnd)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hung := func(what string, err error) {
			if ctx.Err() != nil {
				t.Fatalf("%s did not return: %v", what, err)
			}
		}

		w, err := c.Watch(ctx, "data/host", token)
		hung("WATCH", err)
		events := make(chan struct{})
		var stray []xenstore.Event // read after events is closed
		if w != nil {
			go func() {
				defer close(events)
				for ev := range w.Events() {
					if ev.Token != token {
						stray = append(stray, ev)
					}
				}
			}()
		} else {
			close(events)
		}
		_, err = c.Read(ctx, "data/host/1")
		hung("READ", err)
		names, err := c.Directory(ctx, "data/host")
		hung("DIRECTORY", err)
		if slices.Contains(names, "") {
			t.Errorf("DIRECTORY listed an empty name: %q", names)
		}
		home, err := c.GetDomainPath(ctx, "7")
		hung("GET_DOMAIN_PATH", err)
		if err == nil && home == "" {
			t.Error("GET_DOMAIN_PATH gave an empty path")
		}
		err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
			if _, err := tx.Read(ctx, "data/host/1"); err != nil && !errors.Is(err, xenstore.ErrNotFound) {
				return err
			}
			if err := tx.Rm(ctx, "data/host/1"); err != nil {
				return err
			}
			return tx.Write(ctx, "data/guest/1", []byte(`{"returncode":"0","message":"agent"}`))
		})
		hung("TRANSACTION", err)
		hung("WRITE", c.Write(ctx, "data/guest/2", []byte("x")))
		if w != nil {
			hung("UNWATCH", w.Unwatch(ctx))
		}

		// The server hangs up (if the script did not already).
		serverEnd.Close()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Fatal("the server is stuck")
		}
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("client not done after the server hung up")
		}
		if err := c.Err(); !errors.Is(err, xenstore.ErrDisconnected) {
			t.Fatalf("after the hang-up: %v, want ErrDisconnected", err)
		}
		if _, err := c.Read(ctx, "x"); !errors.Is(err, xenstore.ErrDisconnected) {
			t.Fatalf("a call after the hang-up: %v", err)
		}
		select {
		case <-events:
		case <-time.After(5 * time.Second):
			t.Fatal("the watch's channel stays open after the hang-up")
		}
		if len(stray) > 0 {
			t.Fatalf("events %+v reached the watch of token %q", stray, token)
		}
	})
}

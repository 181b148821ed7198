package session

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Fuzz targets for the hand-off between an exchange and a parser: the
// events an exchange writes on a parser's inbox (with descriptors attached)
// and the packets of a message session. The exchange may be an out-of-tree
// plugin: what it sends must never crash the parser or leak its
// descriptors.

// FuzzFeedNext: whatever an exchange writes on the inbox, with up to four
// descriptors attached, Feed.Next returns an event or an error and never a
// panic; it returns a descriptor only with a handoff (every other one it
// closes: nothing leaks), and a handoff never comes without one.
func FuzzFeedNext(f *testing.F) {
	for _, s := range []struct {
		ev  string
		fds uint8
	}{
		{`{"type":"handoff","channel":"qga","session":"s1","kind":"stream","persistent":true,"origin":"virtio:/dev/vport0p1"}`, 1},
		{`{"type":"handoff","channel":"local","session":"3","kind":"listener","max_connections":4,"listener_path":"/run/qga.sock"}`, 1},
		{`{"type":"handoff","channel":"nova","session":"xenstore","kind":"messages","origin":"xenstore:/dev/xen/xenbus"}`, 1},
		{`{"type":"handoff","channel":"local","session":"7","kind":"stream","peer":{"pid":12,"uid":1000,"gid":1000}}`, 1},
		{`{"type":"host-connected","channel":"qga","session":"s1"}`, 0},
		{`{"type":"host-disconnected","channel":"qga","session":"s1"}`, 0},
		{`{"type":"handoff","channel":"qga","session":"s1"}`, 0},        // handoff without its descriptor
		{`{"type":"host-connected","channel":"qga","session":"s1"}`, 1}, // a descriptor where none belongs
		{`{"type":"handoff","channel":"qga","session":"s1"}`, 3},        // more than one
		{`{"type":"surprise"}`, 2},
		{`{"type":`, 1},
		{``, 1},
		{`{"peer":{"pid":"x"}}`, 0},
		{`{"type":"handoff"}` + strings.Repeat(" ", maxEventLen), 1}, // over the buffer: cut short
		{"{\"type\":\"handoff\",\"origin\":\"\xff\"}", 1},
	} {
		f.Add([]byte(s.ev), s.fds)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		f.Fatal(err)
	}
	defer null.Close()
	a, b := packetPair(f) // starts the runtime's poller before counting descriptors
	a.Close()
	b.Close()
	f.Fuzz(func(t *testing.T, packet []byte, nfds uint8) {
		nfds %= 5
		before := openFDs(t)
		exch, parser := packetPair(t)
		var oob []byte
		if nfds > 0 {
			fds := make([]int, nfds)
			for i := range fds {
				fds[i] = int(null.Fd())
			}
			oob = unix.UnixRights(fds...)
		}
		if _, _, err := exch.WriteMsgUnix(packet, oob, nil); err != nil {
			if len(packet) > 0 || nfds > 0 {
				t.Skipf("the kernel refused the packet: %v", err)
			}
		}
		exch.Close()
		feed := &Feed{conn: parser}
		ev, file, err := feed.Next()
		switch {
		case err != nil && file != nil:
			t.Fatalf("error %v with a descriptor", err)
		case err == nil && ev.Type == EventHandoff && file == nil:
			t.Fatal("handoff without a descriptor accepted")
		case err == nil && ev.Type != EventHandoff && file != nil:
			t.Fatalf("a %q event came with a descriptor: the parser would keep it open", ev.Type)
		}
		if file != nil {
			var st unix.Stat_t
			if err := unix.Fstat(int(file.Fd()), &st); err != nil {
				t.Fatalf("the descriptor handed over is not open: %v", err)
			}
			file.Close()
		}
		// The end of the inbox reads as closed, whatever came before.
		if _, f2, err := feed.Next(); err == nil || f2 != nil {
			t.Fatalf("after the one packet: %v, %v", err, f2)
		}
		feed.Close()
		if after := openFDs(t); after != before {
			t.Fatalf("%d descriptors open before, %d after: leaked", before, after)
		}
	})
}

// FuzzEventRoundTrip: an event an exchange sends arrives as it was sent,
// with its descriptor; one too large for the inbox's buffer is refused by
// the parser rather than taken for another.
func FuzzEventRoundTrip(f *testing.F) {
	f.Add("handoff", "qga", "s1", KindStream, "virtio:/dev/vport0p1", "", int32(1), 0, true, false)
	f.Add("handoff", "local", "3", KindListener, "unix:/run/qga.sock", "/run/qga.sock", int32(-1), 4, false, true)
	f.Add("host-connected", "qga", "s1", "", "", "", int32(0), 0, false, false)
	f.Add("handoff", strings.Repeat("c", maxEventLen), "s", KindMessages, "", "", int32(0), 0, false, false)
	f.Fuzz(func(t *testing.T, typ, channel, sess, kind, origin, lpath string, pid int32, maxConn int, persistent, watch bool) {
		ev := Event{Type: typ, Channel: channel, Session: sess, Kind: kind, Persistent: persistent, Origin: origin,
			MaxConnections: maxConn, ListenerPath: lpath, WatchHost: watch}
		if pid != 0 {
			ev.Peer = &Peer{PID: pid, UID: pid / 2, GID: -pid}
		}
		exch, parser := packetPair(t)
		defer parser.Close()
		out := &Outbox{conn: exch, done: make(chan struct{})}
		var file *os.File
		if typ == EventHandoff {
			var err error
			if file, err = os.Open(os.DevNull); err != nil {
				t.Fatal(err)
			}
			defer file.Close()
		}
		if err := out.Send(ev, file); err != nil {
			t.Skipf("send: %v", err) // e.g. over the socket's limit
		}
		out.Close()
		got, gotFile, err := (&Feed{conn: parser}).Next()
		if gotFile != nil {
			defer gotFile.Close()
		}
		encoded, _ := marshalEvent.Marshal(sent(ev).proto())
		switch {
		case len(encoded) > maxEventLen:
			if err == nil && !reflect.DeepEqual(got, sent(ev)) && json.Valid(encoded[:maxEventLen]) {
				break // cut at a point where it still parses: see the note on FuzzFeedNext's seeds
			}
			if err == nil {
				t.Fatalf("an event of %d bytes (buffer %d) accepted as %+v", len(encoded), maxEventLen, got)
			}
		case err != nil:
			t.Fatalf("%+v: %v", ev, err)
		case (typ == EventHandoff) != (gotFile != nil):
			t.Fatalf("%q event: descriptor %v", typ, gotFile)
		case allUTF8(typ, channel, sess, kind, origin, lpath) && !reflect.DeepEqual(got, sent(ev)):
			t.Fatalf("sent %+v, got %+v", ev, got)
		}
	})
}

// sent is ev as Send sends it: with this package's version.
func sent(ev Event) Event {
	ev.Version = EventVersion
	return ev
}

func allUTF8(s ...string) bool {
	for _, x := range s {
		if !utf8.ValidString(x) {
			return false
		}
	}
	return true
}

// FuzzMessageConn: a message session carries each payload up to MaxMessage
// with its id, refuses longer ones at Write, and reads any packet a peer
// writes by hand without a panic: shorter than the id is an error, the rest
// is id and payload (a packet over MaxMessage+8 bytes, which Write never
// sends, arrives cut to that size by the socket).
func FuzzMessageConn(f *testing.F) {
	f.Add(uint64(1), []byte(`{"name":"version","value":"agent"}`), []byte(nil), 0)
	f.Add(uint64(0xffffffffffffffff), []byte(`{"returncode":"0","message":"1.2.3"}`), []byte{1, 2, 3}, 0)
	f.Add(uint64(7), []byte(nil), []byte{0, 0, 0, 0, 0, 0, 0, 9, 'x'}, 0)
	f.Add(uint64(7), []byte("x"), []byte{}, MaxMessage+1)
	f.Add(uint64(7), []byte("x"), []byte{0, 0, 0, 0, 0, 0, 0, 9}, MaxMessage+100)
	f.Fuzz(func(t *testing.T, id uint64, payload, raw []byte, pad int) {
		a, b := packetPair(t)
		defer a.Close()
		defer b.Close()
		ma := &MessageConn{conn: a, buf: make([]byte, MaxMessage+8)}
		mb := &MessageConn{conn: b, buf: make([]byte, MaxMessage+8)}
		if pad > 0 {
			pad %= 2 * MaxMessage
			payload = append(payload, make([]byte, pad)...)
			raw = append(raw, bytes.Repeat([]byte{'r'}, pad)...)
		}
		err := ma.Write(id, payload)
		if len(payload) > MaxMessage {
			if err == nil {
				t.Fatalf("a payload of %d bytes was sent", len(payload))
			}
		} else {
			if err != nil {
				t.Fatalf("write %d bytes: %v", len(payload), err)
			}
			gotID, got, err := mb.Read()
			if err != nil || gotID != id || !bytes.Equal(got, payload) {
				t.Fatalf("read back: id %d, %d bytes, %v; sent id %d, %d bytes", gotID, len(got), err, id, len(payload))
			}
		}
		// A packet written by hand, not by Write.
		if _, err := a.Write(raw); err != nil {
			t.Skipf("the kernel refused a %d byte packet: %v", len(raw), err)
		}
		gotID, got, err := mb.Read()
		switch {
		case len(raw) < 8:
			if err == nil {
				t.Fatalf("a %d byte packet read as id %d payload %q", len(raw), gotID, got)
			}
		case err != nil:
			t.Fatalf("a %d byte packet: %v", len(raw), err)
		default:
			want := raw[8:min(len(raw), MaxMessage+8)]
			if gotID != binary.BigEndian.Uint64(raw) || !bytes.Equal(got, want) {
				t.Fatalf("a %d byte packet read as id %d and %d bytes", len(raw), gotID, len(got))
			}
		}
		a.Close()
		if _, _, err := mb.Read(); err == nil {
			t.Fatal("read after the peer closed succeeded")
		}
	})
}

package session

import (
	"encoding/json"
	"os"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// event13 is Event as exchanges built against 1.0 to 1.3 encode and decode
// it (encoding/json, these tags, no version).
type event13 struct {
	Type           string `json:"type"`
	Channel        string `json:"channel"`
	Session        string `json:"session"`
	Kind           string `json:"kind,omitempty"`
	Persistent     bool   `json:"persistent,omitempty"`
	Peer           *Peer  `json:"peer,omitempty"`
	Origin         string `json:"origin,omitempty"`
	MaxConnections int    `json:"max_connections,omitempty"`
	ListenerPath   string `json:"listener_path,omitempty"`
	WatchHost      bool   `json:"watch_host,omitempty"`
}

// sendRaw writes one packet on an inbox connection, with a descriptor, and
// returns what the parser's Feed makes of it.
func sendRaw(t *testing.T, packet []byte, withFD bool) (Event, error) {
	t.Helper()
	exch, parser := packetPair(t)
	defer parser.Close()
	out := &Outbox{conn: exch, done: make(chan struct{})}
	defer out.Close()
	var oob []byte
	if withFD {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		oob = unix.UnixRights(int(f.Fd()))
	}
	if _, _, err := exch.WriteMsgUnix(packet, oob, nil); err != nil {
		t.Fatal(err)
	}
	ev, f, err := (&Feed{conn: parser}).Next()
	if f != nil {
		f.Close()
	}
	return ev, err
}

// An exchange built against 1.x keeps working with this parser: its events
// (no version, encoding/json) decode to what it meant, as version 1.
func TestEventsOfOlderExchanges(t *testing.T) {
	for _, old := range []event13{
		{Type: EventHandoff, Channel: "qga", Session: "s1", Kind: KindStream, Persistent: true, Origin: "virtio:/dev/vport0p1", WatchHost: true},
		{Type: EventHandoff, Channel: "local", Session: "3", Kind: KindListener, MaxConnections: 4, ListenerPath: "/run/qga.sock"},
		{Type: EventHandoff, Channel: "local", Session: "7", Peer: &Peer{PID: 12, UID: 1000, GID: -1}},
		{Type: EventHostDisconnected, Channel: "qga", Session: "s1"},
	} {
		packet, err := json.Marshal(old)
		if err != nil {
			t.Fatal(err)
		}
		got, err := sendRaw(t, packet, old.Type == EventHandoff)
		if err != nil {
			t.Fatalf("%s: %v", packet, err)
		}
		want := Event{Version: 1, Type: old.Type, Channel: old.Channel, Session: old.Session, Kind: old.Kind,
			Persistent: old.Persistent, Peer: old.Peer, Origin: old.Origin, MaxConnections: old.MaxConnections,
			ListenerPath: old.ListenerPath, WatchHost: old.WatchHost}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s decoded as %+v, want %+v", packet, got, want)
		}
	}
}

// A later exchange's event, with a higher version and members this parser
// does not know, is taken as far as it is understood; a kind it does not
// know is told apart (the engine refuses such a session).
func TestEventsOfNewerExchanges(t *testing.T) {
	got, err := sendRaw(t, []byte(`{"version":7,"type":"handoff","channel":"qga","session":"s","kind":"datagram",`+
		`"origin":"x","future":{"a":[1,2]},"another":"y"}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 7 || got.Type != EventHandoff || got.Channel != "qga" || got.Origin != "x" || got.Kind != "datagram" {
		t.Fatalf("decoded as %+v", got)
	}
	if KnownKind(got.Kind) || !KnownKind("") || !KnownKind(KindStream) || !KnownKind(KindMessages) || !KnownKind(KindListener) {
		t.Fatal("KnownKind")
	}
}

// A parser built against 1.x (encoding/json into its Event) reads what
// this exchange sends.
func TestEventsForOlderParsers(t *testing.T) {
	ev := Event{Type: EventHandoff, Channel: "local", Session: "9", Kind: KindListener, Peer: &Peer{PID: 5, UID: 6, GID: 7},
		Origin: "unix:/run/x.sock", MaxConnections: 3, ListenerPath: "/run/x.sock", WatchHost: true, Persistent: true}
	packet, err := marshalEvent.Marshal(sent(ev).proto())
	if err != nil {
		t.Fatal(err)
	}
	var old event13
	if err := json.Unmarshal(packet, &old); err != nil {
		t.Fatalf("%s: %v", packet, err)
	}
	want := event13{Type: ev.Type, Channel: ev.Channel, Session: ev.Session, Kind: ev.Kind, Persistent: true, Peer: ev.Peer,
		Origin: ev.Origin, MaxConnections: 3, ListenerPath: ev.ListenerPath, WatchHost: true}
	if !reflect.DeepEqual(old, want) {
		t.Fatalf("%s read by a 1.x parser as %+v, want %+v", packet, old, want)
	}
}

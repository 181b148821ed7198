// Package session hands sessions from exchange plugins to parser plugins.
//
// An exchange owns how bytes reach the guest (a virtio-serial port, a unix or
// vsock listener, XenStore keys); the parser owns what they mean. Rather than
// relaying every request through gRPC, the exchange passes each session's file
// descriptor to the parser (SCM_RIGHTS over a SOCK_SEQPACKET "inbox" socket),
// so the process that decodes a request is the one that reads it and a
// guest-ping never leaves that process.
//
// Two kinds of session exist: a byte stream (the parser reads and writes the
// descriptor directly) and a message stream, for exchanges whose requests are
// discrete (XenStore keys): then the descriptor is one end of a SOCK_SEQPACKET
// pair and each packet is one request or response (see MessageConn).
package session

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"syscall"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"google.golang.org/protobuf/encoding/protojson"

	"golang.org/x/sys/unix"
)

// Kinds of session.
const (
	KindStream   = "stream"
	KindMessages = "messages"
	// KindListener hands over a listening unix socket: the parser accepts
	// connections itself (enforcing MaxConnections, reading SO_PEERCRED),
	// and the exchange, having nothing left to do, may be stopped until the
	// channel must be reopened. An idle agent then runs one process fewer.
	KindListener = "listener"
)

// Event types sent on an outbox.
const (
	// EventHandoff carries a new session and its descriptor.
	EventHandoff = "handoff"
	// EventHostConnected and EventHostDisconnected tell the parser that the
	// peer of a persistent session (a virtio-serial port) came or went, so it
	// can wait for the host without polling a descriptor that reports HUP.
	EventHostConnected    = "host-connected"
	EventHostDisconnected = "host-disconnected"
)

// Peer identifies the process at the other end of a local socket.
type Peer struct {
	PID int32 `json:"pid"`
	UID int32 `json:"uid"`
	GID int32 `json:"gid"`
	// Groups are the supplementary groups (SO_PEERGROUPS), for a
	// channel's policy per caller: at most MaxPeerGroups, so that an event
	// stays within its packet.
	Groups []int32 `json:"groups,omitempty"`
}

// MaxPeerGroups bounds Peer.Groups (an event is at most 16 KiB).
const MaxPeerGroups = 1000

// EventVersion is the schema version of the events this package sends
// (guestagent.v1.SessionEvent.version); events without one are version 1.
const EventVersion = 1

// Event is one message from an exchange to a parser: the Go form of
// guestagent.v1.SessionEvent, whose documentation in guestagent.proto is
// the contract (encoding, compatibility between versions).
type Event struct {
	// Version is the sender's EventVersion; Send sets it.
	Version int    `json:"version,omitempty"`
	Type    string `json:"type"`
	Channel string `json:"channel"`
	Session string `json:"session"`
	Kind    string `json:"kind,omitempty"`
	// Persistent sessions (virtio-serial, isa-serial) outlive host
	// disconnects: on EOF the parser waits for EventHostConnected instead of
	// closing the session.
	Persistent bool   `json:"persistent,omitempty"`
	Peer       *Peer  `json:"peer,omitempty"`
	Origin     string `json:"origin,omitempty"` // for logs: "unix:/run/qga.sock"
	// For KindListener: the most connections served at once (0: no limit)
	// and the socket's path, removed by the parser when it stops serving it.
	MaxConnections int    `json:"max_connections,omitempty"`
	ListenerPath   string `json:"listener_path,omitempty"`
	// WatchHost hands a persistent session over entirely: the parser takes
	// the descriptor's SIGIO (F_SETOWN) and follows host connects itself,
	// so the exchange has nothing left to do (virtio-serial).
	WatchHost bool `json:"watch_host,omitempty"`
}

const maxEventLen = 16 << 10

// Outbox is the exchange's end of an inbox connection.
type Outbox struct {
	conn       *net.UnixConn
	mu         sync.Mutex
	done       chan struct{}
	handedOver bool
}

// HandedOver reports whether a listener was handed to the parser: the
// channel no longer needs the exchange.
func (o *Outbox) HandedOver() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.handedOver
}

// DialOutbox connects to a parser's inbox socket.
func DialOutbox(inbox string) (*Outbox, error) {
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: inbox, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("session: dial inbox %s: %w", inbox, err)
	}
	o := &Outbox{conn: conn, done: make(chan struct{})}
	go func() {
		// The parser never writes; a read returns when it goes away.
		var b [1]byte
		_, _ = conn.Read(b[:])
		close(o.done)
	}()
	return o, nil
}

// Done is closed when the parser side of the inbox is gone.
func (o *Outbox) Done() <-chan struct{} { return o.done }

// Close closes the outbox.
func (o *Outbox) Close() error { return o.conn.Close() }

// Send sends ev, with c's descriptor attached when c is not nil: any
// syscall.Conn (an *os.File, a *net.TCPConn, a *net.UnixConn...). The
// caller keeps its own copy of c; the parser gets the descriptor
// non-blocking, whatever the caller does with its copy.
func (o *Outbox) Send(ev Event, c syscall.Conn) error {
	ev.Version = EventVersion
	b, err := marshalEvent.Marshal(ev.proto())
	if err != nil {
		return fmt.Errorf("session: encode event: %w", err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	send := func(fd uintptr) {
		var oob []byte
		if fd != noFD {
			oob = unix.UnixRights(int(fd))
		}
		_, _, err = o.conn.WriteMsgUnix(b, oob, nil)
	}
	if isNil(c) {
		send(noFD)
	} else {
		// Not File.Fd: it puts the file description, shared with the
		// parser, in blocking mode, and each session would then hold a
		// thread of the parser in read(2).
		rc, cerr := c.SyscallConn()
		if cerr != nil {
			return fmt.Errorf("session: %s event: descriptor: %w", ev.Type, cerr)
		}
		if cerr := rc.Control(send); cerr != nil {
			return fmt.Errorf("session: %s event: descriptor: %w", ev.Type, cerr)
		}
	}
	if err != nil {
		return fmt.Errorf("session: send %s event: %w", ev.Type, err)
	}
	if ev.Kind == KindListener || ev.WatchHost {
		o.handedOver = true
	}
	return nil
}

// The events' encoding (see SessionEvent in guestagent.proto): JSON with
// the proto field names; members a parser does not know are ignored.
var (
	marshalEvent   = protojson.MarshalOptions{UseProtoNames: true}
	unmarshalEvent = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// proto is the event as it goes on the wire; strings that are not UTF-8
// (a path, say) are sent with U+FFFD in place, as encoding/json did.
func (ev Event) proto() *pb.SessionEvent {
	utf := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
	m := &pb.SessionEvent{
		Version: uint32(ev.Version), Type: utf(ev.Type), Channel: utf(ev.Channel), Session: utf(ev.Session),
		Kind: utf(ev.Kind), Persistent: ev.Persistent, Origin: utf(ev.Origin), MaxConnections: int32(ev.MaxConnections),
		ListenerPath: utf(ev.ListenerPath), WatchHost: ev.WatchHost,
	}
	if ev.Peer != nil {
		m.Peer = &pb.SessionPeer{Pid: ev.Peer.PID, Uid: ev.Peer.UID, Gid: ev.Peer.GID, Groups: ev.Peer.Groups}
	}
	return m
}

func eventOf(m *pb.SessionEvent) Event {
	ev := Event{
		Version: int(m.Version), Type: m.Type, Channel: m.Channel, Session: m.Session, Kind: m.Kind,
		Persistent: m.Persistent, Origin: m.Origin, MaxConnections: int(m.MaxConnections),
		ListenerPath: m.ListenerPath, WatchHost: m.WatchHost,
	}
	if ev.Version == 0 {
		ev.Version = 1 // 1.0 to 1.3 sent none
	}
	if m.Peer != nil {
		ev.Peer = &Peer{PID: m.Peer.Pid, UID: m.Peer.Uid, GID: m.Peer.Gid, Groups: m.Peer.Groups}
	}
	return ev
}

// KnownKind tells whether a handoff's kind is one this package knows
// (stream, the default, messages or listener): a parser refuses a session
// of another kind, sent by a newer exchange, rather than misread it.
func KnownKind(kind string) bool {
	switch kind {
	case "", KindStream, KindMessages, KindListener:
		return true
	}
	return false
}

// noFD stands for "no descriptor" in Send.
const noFD = ^uintptr(0)

// isNil tells a nil syscall.Conn, typed (a nil *os.File) or not.
func isNil(c syscall.Conn) bool {
	if c == nil {
		return true
	}
	v := reflect.ValueOf(c)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// Inbox is the parser's listening socket for one channel.
type Inbox struct {
	ln *net.UnixListener
}

// ListenInbox creates the inbox socket at path (removing a stale one) with
// mode 0600: only the agent's own processes may hand sessions to it.
func ListenInbox(path string) (*Inbox, error) {
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("session: listen inbox %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("session: chmod inbox: %w", err)
	}
	return &Inbox{ln: ln}, nil
}

// Accept waits for an exchange to connect.
func (in *Inbox) Accept() (*Feed, error) {
	conn, err := in.ln.AcceptUnix()
	if err != nil {
		return nil, fmt.Errorf("session: accept on inbox: %w", err)
	}
	return &Feed{conn: conn}, nil
}

// Close stops the inbox.
func (in *Inbox) Close() error { return in.ln.Close() }

// Feed is the stream of events from one exchange connection.
type Feed struct {
	conn *net.UnixConn
}

// Next returns the next event and, for a handoff, the session's descriptor
// (any other event comes without one: a descriptor sent with it is closed).
func (f *Feed) Next() (Event, *os.File, error) {
	buf := make([]byte, maxEventLen)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := f.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return Event{}, nil, fmt.Errorf("session: read event: %w", err)
	}
	if n == 0 && oobn == 0 {
		return Event{}, nil, fmt.Errorf("session: exchange closed the inbox: %w", net.ErrClosed)
	}
	var file *os.File
	if oobn > 0 {
		fds, err := parseRights(oob[:oobn])
		if err != nil {
			return Event{}, nil, err
		}
		for i, fd := range fds {
			if i == 0 {
				// Non-blocking before it is wrapped, whatever the exchange
				// left: os.NewFile then puts it in the netpoller, so an idle
				// session costs no thread (an exchange that sent it with
				// File.Fd made it blocking).
				if err := unix.SetNonblock(fd, true); err != nil {
					unix.Close(fd)
					continue
				}
				file = os.NewFile(uintptr(fd), "session")
			} else {
				unix.Close(fd) // never expected; do not leak it
			}
		}
	}
	var msg pb.SessionEvent
	// encoding/json, which 1.0 to 1.3 exchanges use, writes no invalid
	// UTF-8; an exchange that does gets it replaced, as before.
	if err := unmarshalEvent.Unmarshal(bytes.ToValidUTF8(buf[:n], []byte("\uFFFD")), &msg); err != nil {
		if file != nil {
			file.Close()
		}
		return Event{}, nil, fmt.Errorf("session: decode event: %w", err)
	}
	ev := eventOf(&msg)
	if ev.Type == EventHandoff && file == nil {
		return Event{}, nil, errors.New("session: handoff without a descriptor")
	}
	if ev.Type != EventHandoff && file != nil {
		// Only a handoff carries a descriptor: the caller would keep a
		// stray one open for ever.
		file.Close()
		file = nil
	}
	return ev, file, nil
}

// Close closes the feed.
func (f *Feed) Close() error { return f.conn.Close() }

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("session: parse control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// PeerOf returns the credentials of the process at the other end of a unix
// socket connection (SO_PEERCRED).
func PeerOf(conn *net.UnixConn) (*Peer, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("session: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("session: peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("session: SO_PEERCRED: %w", credErr)
	}
	return &Peer{PID: cred.Pid, UID: int32(cred.Uid), GID: int32(cred.Gid)}, nil
}

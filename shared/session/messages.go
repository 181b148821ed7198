package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// MaxMessage bounds one packet of a message session.
const MaxMessage = 64 << 10

// MessageConn is one end of a message session: each packet is an 8-byte
// request id followed by the request or response bytes.
type MessageConn struct {
	conn *net.UnixConn
	buf  []byte
}

// NewMessagePair returns the exchange's end of a new message session and the
// file to hand to the parser (close it after Send).
func NewMessagePair() (*MessageConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("session: socketpair: %w", err)
	}
	local := os.NewFile(uintptr(fds[0]), "session-local")
	remote := os.NewFile(uintptr(fds[1]), "session-remote")
	mc, err := NewMessageConn(local)
	local.Close()
	if err != nil {
		remote.Close()
		return nil, nil, err
	}
	return mc, remote, nil
}

// NewMessageConn wraps a received message-session descriptor. f may be closed
// afterwards.
func NewMessageConn(f *os.File) (*MessageConn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("session: message conn: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("session: message session is not a unix socket")
	}
	return &MessageConn{conn: uc, buf: make([]byte, MaxMessage+8)}, nil
}

// Read returns the next message; its payload is valid until the next Read.
func (m *MessageConn) Read() (uint64, []byte, error) {
	n, err := m.conn.Read(m.buf)
	if err != nil {
		return 0, nil, fmt.Errorf("session: read message: %w", err)
	}
	if n == 0 {
		return 0, nil, fmt.Errorf("session: message session closed: %w", net.ErrClosed)
	}
	if n < 8 {
		return 0, nil, fmt.Errorf("session: short message of %d bytes", n)
	}
	return binary.BigEndian.Uint64(m.buf[:8]), m.buf[8:n], nil
}

// Write sends one message. Safe for concurrent use: each is one packet.
func (m *MessageConn) Write(id uint64, payload []byte) error {
	if len(payload) > MaxMessage {
		return fmt.Errorf("session: message of %d bytes exceeds %d", len(payload), MaxMessage)
	}
	pkt := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint64(pkt, id)
	copy(pkt[8:], payload)
	if _, err := m.conn.Write(pkt); err != nil {
		return fmt.Errorf("session: write message: %w", err)
	}
	return nil
}

// Close closes the session.
func (m *MessageConn) Close() error { return m.conn.Close() }

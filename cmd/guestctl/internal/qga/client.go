// Package qga is a host-side client of the QEMU guest agent protocol, as
// spoken by guest-agent and qemu-ga over a virtio-serial chardev socket.
package qga

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"time"
)

// Client talks to one agent.
type Client struct {
	conn    net.Conn
	r       *bufio.Reader
	Timeout time.Duration
}

// Error is an error reply of the agent.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Dial connects to the unix socket of a guest's agent channel.
func Dial(ctx context.Context, socket string, timeout time.Duration) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	return &Client{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), Timeout: timeout}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Sync does what libvirt does before each command: flush the agent's parser
// with 0xFF, send guest-sync-delimited with a random id, and discard
// everything up to the 0xFF that precedes the matching reply, so a stale
// reply from an earlier, timed-out command is never taken for ours.
func (c *Client) Sync() error {
	id := rand.Int64N(1 << 31)
	req := fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id)
	c.deadline()
	if _, err := c.conn.Write([]byte(req)); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	for {
		if _, err := c.r.ReadBytes(0xFF); err != nil {
			return fmt.Errorf("sync: no delimiter from the agent: %w", err)
		}
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("sync: %w", err)
		}
		var reply struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(line, &reply) == nil && reply.Return != nil && *reply.Return == id {
			return nil
		}
	}
}

func (c *Client) deadline() {
	if c.Timeout > 0 {
		_ = c.conn.SetDeadline(time.Now().Add(c.Timeout))
	}
}

// Call runs a command and returns its "return" value. A nil args sends no
// "arguments" member.
func (c *Client) Call(command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	return c.CallRaw(append(b, '\n'))
}

// CallRaw sends raw request bytes and reads one reply line.
func (c *Client) CallRaw(req []byte) (json.RawMessage, error) {
	c.deadline()
	if _, err := c.conn.Write(req); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("read reply: %w", err)
	}
	line = bytes.TrimLeft(line, "\xff")
	var reply struct {
		Return json.RawMessage `json:"return"`
		Error  *Error          `json:"error"`
	}
	if err := json.Unmarshal(line, &reply); err != nil {
		return nil, fmt.Errorf("bad reply %q: %w", line, err)
	}
	if reply.Error != nil {
		return nil, reply.Error
	}
	return reply.Return, nil
}

// Send writes a request without waiting for a reply (guest-shutdown).
func (c *Client) Send(command string, args any) error {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	c.deadline()
	_, err := c.conn.Write(append(b, '\n'))
	return err
}

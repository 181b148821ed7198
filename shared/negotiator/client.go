package negotiator

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// RemoteError is an error reply: the call reached the other side and failed
// there.
type RemoteError struct {
	Msg string
}

func (e *RemoteError) Error() string { return e.Msg }

// deadliner is a connection whose reads and writes can be given a
// deadline: net.Conn and a pollable *os.File.
type deadliner interface {
	SetDeadline(t time.Time) error
}

// Client calls the other side over one stream. Calls are serialised: the
// protocol has no request ids. After a timeout or an I/O error the stream
// may hold a late reply, so the client refuses further calls: dial again.
type Client struct {
	rw     io.ReadWriter
	r      *bufio.Reader
	mu     sync.Mutex
	broken error
	// Timeout bounds one call (0: none).
	Timeout time.Duration
	// MaxReplyBytes bounds one reply (0: DefaultMaxMessageBytes).
	MaxReplyBytes int64
}

// NewClient wraps a stream to the other side.
func NewClient(rw io.ReadWriter, timeout time.Duration) *Client {
	return &Client{rw: rw, r: bufio.NewReaderSize(rw, 64<<10), Timeout: timeout}
}

// Call calls method with positional and keyword arguments and returns the
// result's JSON. A *RemoteError is a failure on the other side.
func (c *Client) Call(ctx context.Context, method string, args []any, kw map[string]any) (json.RawMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, fmt.Errorf("%s: the channel is unusable after an earlier failure: %w", method, c.broken)
	}
	body, err := EncodeRequest(method, args, kw)
	if err != nil {
		return nil, err
	}
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	d, canDeadline := c.rw.(deadliner)
	if canDeadline {
		if dl, ok := ctx.Deadline(); ok {
			_ = d.SetDeadline(dl)
		}
		// Cancellation interrupts a blocked read or write at once.
		stop := context.AfterFunc(ctx, func() { _ = d.SetDeadline(time.Unix(1, 0)) })
		defer func() {
			stop()
			_ = d.SetDeadline(time.Time{})
		}()
	}
	reply, err := c.exchange(body)
	if err != nil {
		if ctx.Err() != nil && (errors.Is(err, os.ErrDeadlineExceeded) || !canDeadline) {
			err = fmt.Errorf("no reply within the timeout (%v)", context.Cause(ctx))
		}
		c.broken = err
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	if !reply.Success {
		return nil, &RemoteError{Msg: reply.Error}
	}
	return reply.Result, nil
}

func (c *Client) exchange(body []byte) (Reply, error) {
	if err := WriteFrame(c.rw, body); err != nil {
		return Reply{}, err
	}
	max := c.MaxReplyBytes
	if max <= 0 {
		max = DefaultMaxMessageBytes
	}
	frame, err := ReadFrame(c.r, max)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("the other side closed the channel without a reply")
		}
		return Reply{}, err
	}
	return DecodeReply(frame)
}

// ListCommands calls list_commands().
func (c *Client) ListCommands(ctx context.Context) ([]string, error) {
	raw, err := c.Call(ctx, "list_commands", nil, nil)
	if err != nil {
		return nil, err
	}
	var names []string
	if err := json.Unmarshal(raw, &names); err != nil {
		return nil, fmt.Errorf("list_commands: unexpected result %.200s", raw)
	}
	return names, nil
}

// Execute calls execute(*argv, input=input) and returns the command's
// output (a null result, from an older peer, is "").
func (c *Client) Execute(ctx context.Context, argv []string, input *string) (string, error) {
	args := make([]any, len(argv))
	for i, a := range argv {
		args[i] = a
	}
	var kw map[string]any
	if input != nil {
		kw = map[string]any{"input": *input}
	}
	raw, err := c.Call(ctx, "execute", args, kw)
	if err != nil {
		return "", err
	}
	if string(raw) == "null" {
		return "", nil
	}
	var out string
	if err := json.Unmarshal(raw, &out); err != nil {
		return "", fmt.Errorf("execute: unexpected result %.200s", raw)
	}
	return out, nil
}

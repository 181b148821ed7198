package negotiator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// ServeOptions bound what a peer can make the serving side hold or wait
// for.
type ServeOptions struct {
	// MaxMessageBytes bounds one request (0: DefaultMaxMessageBytes).
	MaxMessageBytes int64
	// FrameTimeout bounds the time from the first byte of a request to its
	// last (0: none): a peer that stops mid-frame is answered with an error
	// and the connection is closed, since what follows cannot be framed.
	FrameTimeout time.Duration
	// WriteTimeout bounds writing one reply (0: none).
	WriteTimeout time.Duration
}

// Serve answers requests on conn, one at a time and in order, until the
// peer closes it (nil), ctx is done or the stream cannot go on (an error).
// A malformed frame is answered with an error reply and skipped.
func Serve(ctx context.Context, conn net.Conn, svc Service, o ServeOptions) error {
	max := o.MaxMessageBytes
	if max <= 0 {
		max = DefaultMaxMessageBytes
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	// A small buffer: a daemon holds one per guest, idle most of the
	// time, and a body is read straight into its own slice anyway.
	r := bufio.NewReaderSize(conn, 4<<10)
	for {
		// Idle between requests for as long as the peer likes.
		if err := conn.SetReadDeadline(time.Time{}); err != nil {
			return fmt.Errorf("clear the read deadline: %w", err)
		}
		if _, err := r.Peek(1); err != nil {
			return endOfStream(ctx, err)
		}
		if o.FrameTimeout > 0 {
			_ = conn.SetReadDeadline(time.Now().Add(o.FrameTimeout))
		}
		body, err := ReadFrame(r, max)
		var reply []byte
		switch {
		case err == nil:
			reply = Answer(ctx, svc, body)
		case IsFrameError(err):
			reply = EncodeError(err.Error())
		case errors.Is(err, net.ErrClosed) || ctx.Err() != nil:
			return endOfStream(ctx, err)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("the peer left in the middle of a request: %w", err)
		case isTimeout(err):
			_ = write(conn, o.WriteTimeout, EncodeError(fmt.Sprintf("request discarded: it did not arrive whole within %s", o.FrameTimeout)))
			return fmt.Errorf("incomplete request after %s: %w", o.FrameTimeout, err)
		default:
			return err
		}
		if err := write(conn, o.WriteTimeout, reply); err != nil {
			return err
		}
	}
}

func write(conn net.Conn, timeout time.Duration, reply []byte) error {
	if timeout > 0 {
		_ = conn.SetWriteDeadline(time.Now().Add(timeout))
		defer conn.SetWriteDeadline(time.Time{})
	}
	return WriteFrame(conn, reply)
}

func endOfStream(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return fmt.Errorf("read: %w", err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

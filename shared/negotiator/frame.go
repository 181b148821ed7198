package negotiator

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
)

// FrameError is a frame the peer got wrong. The reader has already skipped
// past it (to the end of a bad length line, or over an oversized body), so
// the caller answers it with an error reply and reads on.
type FrameError struct {
	Msg string
}

func (e *FrameError) Error() string { return e.Msg }

// IsFrameError tells a protocol violation (answer and go on) from an I/O
// error (the connection is gone or timed out).
func IsFrameError(err error) bool {
	var fe *FrameError
	return errors.As(err, &fe)
}

// ReadFrame reads one frame and returns its JSON body. maxBody bounds the
// body; the length line is bounded by MaxLengthDigits. Blank lines between
// frames are skipped (a peer typing by hand). Bad input yields a
// *FrameError after the stream was resynchronised: a length line that is
// not a number is skipped to its newline, an oversized body is read and
// dropped without being held. A body cut short by EOF is
// io.ErrUnexpectedEOF.
func ReadFrame(r *bufio.Reader, maxBody int64) ([]byte, error) {
	n, err := readLength(r, maxBody)
	if err != nil {
		return nil, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read a frame of %d bytes: %w", n, err)
	}
	return body, nil
}

// readLength reads the length line and checks it against maxBody.
func readLength(r *bufio.Reader, maxBody int64) (int64, error) {
	var line [MaxLengthDigits + 1]byte
	for {
		n := 0
		for {
			b, err := r.ReadByte()
			if err != nil {
				if errors.Is(err, io.EOF) && n > 0 {
					err = io.ErrUnexpectedEOF
				}
				return 0, err
			}
			if b == '\n' {
				break
			}
			if n == len(line) {
				// Bounded: the rest of the line is skipped, not held.
				if err := skipLine(r); err != nil {
					return 0, err
				}
				return 0, &FrameError{Msg: fmt.Sprintf("invalid frame: the length line is longer than %d characters", MaxLengthDigits)}
			}
			line[n] = b
			n++
		}
		text := line[:n]
		if n > 0 && text[n-1] == '\r' {
			text = text[:n-1]
		}
		if len(text) == 0 {
			continue
		}
		for _, c := range text {
			if c < '0' || c > '9' {
				return 0, &FrameError{Msg: fmt.Sprintf("invalid frame: expected a byte count, got %q", text)}
			}
		}
		size, err := strconv.ParseInt(string(text), 10, 64)
		if err != nil {
			return 0, &FrameError{Msg: fmt.Sprintf("invalid frame: byte count %s is out of range", text)}
		}
		if size > maxBody {
			if _, err := io.CopyN(io.Discard, r, size); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return 0, fmt.Errorf("skip an oversized frame of %d bytes: %w", size, err)
			}
			return 0, &FrameError{Msg: fmt.Sprintf("message of %d bytes is over the limit of %d bytes", size, maxBody)}
		}
		return size, nil
	}
}

func skipLine(r *bufio.Reader) error {
	for {
		_, err := r.ReadSlice('\n')
		if err == nil {
			return nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

// AppendHeader appends the length line of a body of n bytes.
func AppendHeader(dst []byte, n int) []byte {
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, '\n')
}

// WriteFrame writes one frame in one writev: the length line beside the
// body, which is not copied.
func WriteFrame(w io.Writer, body []byte) error {
	var hdr [MaxLengthDigits + 1]byte
	bufs := net.Buffers{AppendHeader(hdr[:0], len(body)), body}
	if _, err := bufs.WriteTo(w); err != nil {
		return fmt.Errorf("write a frame of %d bytes: %w", len(body), err)
	}
	return nil
}

package negotiator

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

type nullService struct{}

func (nullService) ListCommands(context.Context) ([]string, error) { return []string{"a"}, nil }
func (nullService) Execute(_ context.Context, argv []string, in *string) (string, error) {
	return argv[0], nil
}

// FuzzStream feeds arbitrary bytes to the framing and the request decoder:
// every frame is answered with a well-formed ASCII reply, and the reader
// always gets to the end of the input (no hang, no unbounded buffer).
func FuzzStream(f *testing.F) {
	f.Add([]byte("44\n{\"method\":\"list_commands\",\"args\":[],\"kw\":{}}"))
	f.Add([]byte("31\n{\"method\":\"execute\",\"args\":[\"x\"]}"))
	f.Add([]byte("abc\n2\n{}\n\n5\n[1,2]"))
	f.Add([]byte("99999999999999999999999\n"))
	f.Add([]byte("3\n{\"m"))
	f.Add([]byte("40\n{\"command\":\"execute\",\"arguments\":[\"\xff\"]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for i := 0; ; i++ {
			if i > len(data)+1 {
				t.Fatal("more frames than input bytes")
			}
			body, err := ReadFrame(r, 1<<10)
			var reply []byte
			switch {
			case err == nil:
				if len(body) > 1<<10 {
					t.Fatalf("body of %d bytes over the limit", len(body))
				}
				reply = Answer(context.Background(), nullService{}, body)
			case IsFrameError(err):
				reply = EncodeError(err.Error())
			case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
				return
			default:
				t.Fatalf("unexpected error: %v", err)
			}
			if _, err := DecodeReply(reply); err != nil {
				t.Fatalf("reply %q: %v", reply, err)
			}
			for _, c := range reply {
				if c >= 0x80 {
					t.Fatalf("non-ASCII reply %q", reply)
				}
			}
		}
	})
}

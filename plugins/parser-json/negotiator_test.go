package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"testing"
)

// readFrames splits a negotiator reply stream by the protocol text alone:
// an ASCII length, "\n", that many bytes.
func readFrames(t *testing.T, input, stream []byte) [][]byte {
	t.Helper()
	r := bufio.NewReader(bytes.NewReader(stream))
	var frames [][]byte
	for {
		line, err := r.ReadString('\n')
		if err == io.EOF && line == "" {
			return frames
		}
		n, perr := strconv.Atoi(strings.TrimSuffix(line, "\n"))
		if err != nil || perr != nil || n < 0 {
			t.Fatalf("%q: bad length line %q in the replies", input, line)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			t.Fatalf("%q: reply cut short: %v", input, err)
		}
		frames = append(frames, body)
	}
}

// FuzzNegotiatorStream: whatever a host writes on a negotiator session,
// the session ends when the host does (no hang), and every reply is a
// frame of ASCII JSON {"success": bool, ...} with an error text when it
// failed.
func FuzzNegotiatorStream(f *testing.F) {
	for _, s := range []string{
		"44\n{\"method\":\"list_commands\",\"args\":[],\"kw\":{}}",
		"31\n{\"method\":\"execute\",\"args\":[\"x\"]}",
		"48\n{\"command\":\"execute\",\"arguments\":[\"a\",\"\\u00e9\"]}",
		"abc\n2\n{}\n\n5\n[1,2]",
		"99999999999999999999999\n",
		"5000\n" + strings.Repeat("y", 5000),
		"3\n{\"m",
		"16\n{\"method\":null}4\nnull",
		"2\n\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	const limit = 4096
	ch := newEngineChannel(f, "negotiator", limit)
	f.Fuzz(func(t *testing.T, input []byte) {
		replies := ch.session(t, input)
		for _, body := range readFrames(t, input, replies) {
			for _, c := range body {
				if c >= 0x80 {
					t.Fatalf("%q: non-ASCII reply %q", input, body)
				}
			}
			var r struct {
				Success *bool   `json:"success"`
				Error   *string `json:"error"`
			}
			if err := json.Unmarshal(body, &r); err != nil || r.Success == nil || (!*r.Success && (r.Error == nil || *r.Error == "")) {
				t.Fatalf("%q: reply %q is not a negotiator reply (%v)", input, body, err)
			}
		}
	})
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// serveLines runs a newline-delimited request/response loop over a stream
// session, for dialects whose requests are one JSON document each. A line
// over the request limit is skipped to its end and answered by tooLarge, so
// the stream stays usable.
func serveLines(ctx context.Context, s sdk.StreamSession, handle func(line []byte) []byte, tooLarge func(limit int64) []byte) error {
	r := bufio.NewReaderSize(s, 64<<10)
	limit := s.MaxRequestBytes()
	var line []byte
	oversized := false
	for {
		chunk, err := r.ReadSlice('\n')
		if !oversized && int64(len(line)+len(chunk)) > limit {
			oversized, line = true, line[:0]
		}
		if !oversized {
			line = append(line, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == nil {
			var reply []byte
			if oversized {
				reply = tooLarge(limit)
			} else if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
				reply = handle(trimmed)
			}
			if reply != nil {
				if _, werr := s.Write(reply); werr != nil {
					return fmt.Errorf("write reply: %w", werr)
				}
			}
		}
		line, oversized = line[:0], false
		if err != nil {
			if errors.Is(err, io.EOF) {
				if s.Persistent() {
					if werr := s.WaitHost(ctx); werr != nil {
						return werr
					}
					continue
				}
				return nil
			}
			return fmt.Errorf("read: %w", err)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"
)

// guestRun runs argv in the guest (guest-exec, no shell), waits for it
// with guest-exec-status (every agent serves it) and returns its stdout;
// a non-zero exit is an error quoting its stderr.
func (a *agent) guestRun(ctx context.Context, o *options, argv []string) ([]byte, error) {
	var started struct {
		Pid int64 `json:"pid"`
	}
	if err := a.call(ctx, o, "guest-exec", map[string]any{"path": argv[0], "arg": argv[1:], "capture-output": true}, &started); err != nil {
		return nil, err
	}
	delay := time.Millisecond
	for {
		var st execStatus
		if err := a.call(ctx, o, "guest-exec-status", map[string]any{"pid": started.Pid}, &st); err != nil {
			return nil, err
		}
		if st.Exited {
			out, _ := base64.StdEncoding.DecodeString(st.OutData)
			errOut, _ := base64.StdEncoding.DecodeString(st.ErrData)
			switch {
			case st.OutTruncated:
				return nil, fmt.Errorf("%s in the guest: its output was cut at the agent's limit", argv[0])
			case st.Exitcode != nil && *st.Exitcode == 0:
				return out, nil
			case st.Exitcode != nil:
				return out, &guestExitError{argv: argv, code: *st.Exitcode, stderr: string(bytes.TrimSpace(errOut))}
			default:
				return out, fmt.Errorf("%s in the guest: killed by signal %d", argv[0], derefOr(st.Signal, 0))
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}

// guestExitError is a guest program that exited non-zero.
type guestExitError struct {
	argv   []string
	code   int
	stderr string
}

func (e *guestExitError) Error() string {
	msg := fmt.Sprintf("%s in the guest exited %d", strings.Join(e.argv[:min(len(e.argv), 3)], " "), e.code)
	if e.stderr != "" {
		msg += ": " + e.stderr
	}
	return msg
}

func derefOr(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

// batchArgs splits args so that no guest command line gets too long.
func batchArgs(args []string, maxArgs int) [][]string {
	var out [][]string
	for len(args) > 0 {
		n := min(len(args), maxArgs)
		out = append(out, args[:n])
		args = args[n:]
	}
	return out
}

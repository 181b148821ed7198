package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// Commands beyond qemu-ga that drive a running guest-exec: stop it
// (guest-exec-terminate), read its output as it comes (guest-exec-read)
// and feed its stdin (guest-exec-write). Named in qemu-ga's style; QEMU
// never merged a terminate, and declined streaming.

const (
	// defaultReadBytes and maxReadBytes bound one guest-exec-read per
	// stream (base64 makes a reply 4/3 of that; libvirt refuses replies
	// over 10 MiB).
	defaultReadBytes = 1 << 20
	maxReadBytes     = 4 << 20
	// maxReadWait bounds how long a guest-exec-read waits for output.
	maxReadWait = 30 * time.Second
	// writeWait is how long guest-exec-write waits for a child that does
	// not read its stdin before it answers with what went through.
	writeWait = 5 * time.Second
)

func streamCommands(ex *execer) []sdk.Command {
	return []sdk.Command{
		{
			Name:        "guest-exec-terminate",
			Description: "Send a signal (default SIGTERM) to the process group of a running guest-exec.",
			ArgsSchema: `{"type":"object","required":["pid"],"additionalProperties":false,"properties":{` +
				`"pid":{"type":"integer"},"signal":{"oneOf":[{"type":"integer"},{"type":"string"}]}}}`,
			Handler: ex.handleTerminate,
		},
		{
			Name:        "guest-exec-read",
			Description: "Read the captured output of a guest-exec from an offset per stream, waiting up to 'wait' seconds for some.",
			ArgsSchema: `{"type":"object","required":["pid"],"additionalProperties":false,"properties":{` +
				`"pid":{"type":"integer"},"out-offset":{"type":"integer","minimum":0},"err-offset":{"type":"integer","minimum":0},` +
				`"max-bytes":{"type":"integer","minimum":1},"wait":{"type":"number","minimum":0}}}`,
			Handler: ex.handleRead,
		},
		{
			Name:        "guest-exec-write",
			Description: "Write to the stdin of a guest-exec started with input-pipe; close it with 'close'.",
			ArgsSchema: `{"type":"object","required":["pid"],"additionalProperties":false,"properties":{` +
				`"pid":{"type":"integer"},"input-data":{"type":"string","contentEncoding":"base64"},"close":{"type":"boolean"}}}`,
			BlobArg: "input-data",
			Handler: ex.handleWrite,
		},
	}
}

// lookup returns the record of pid, or qemu-ga's error for an unknown pid.
func (e *execer) lookup(pid int64) (*record, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	rec := e.procs[pid]
	if rec == nil {
		return nil, sdk.Errorf("Invalid parameter 'pid'")
	}
	return rec, nil
}

// signalArg is a signal by number or by name (TERM, SIGTERM, kill).
type signalArg struct{ sig syscall.Signal }

func (s *signalArg) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		if n <= 0 || n > 64 {
			return sdk.Errorf("Parameter 'signal' must be a signal number from 1 to 64")
		}
		s.sig = syscall.Signal(n)
		return nil
	}
	var name string
	if err := json.Unmarshal(b, &name); err != nil {
		return sdk.Errorf("Invalid parameter type for 'signal', expected: integer or string")
	}
	want := "SIG" + strings.TrimPrefix(strings.ToUpper(name), "SIG")
	for n := syscall.Signal(1); n < 32; n++ {
		if signalName(n) == want {
			s.sig = n
			return nil
		}
	}
	return sdk.Errorf("Parameter 'signal' does not accept value '%s'", name)
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT", syscall.SIGKILL: "SIGKILL",
	syscall.SIGUSR1: "SIGUSR1", syscall.SIGUSR2: "SIGUSR2", syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM",
	syscall.SIGTERM: "SIGTERM", syscall.SIGCONT: "SIGCONT", syscall.SIGSTOP: "SIGSTOP", syscall.SIGTSTP: "SIGTSTP",
	syscall.SIGWINCH: "SIGWINCH",
}

func signalName(s syscall.Signal) string { return signalNames[s] }

// handleTerminate signals the process group of a running guest-exec. A
// process that has already exited is left alone (its status is still
// there to read): signalling it is not an error.
func (e *execer) handleTerminate(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Pid    int64      `json:"pid"`
		Signal *signalArg `json:"signal"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	sig := syscall.SIGTERM
	if a.Signal != nil {
		sig = a.Signal.sig
	}
	// Under the lock: the reaper marks the record finished under it too,
	// so a group that is signalled is still this child's.
	e.mu.Lock()
	defer e.mu.Unlock()
	rec := e.procs[a.Pid]
	if rec == nil {
		return nil, sdk.Errorf("Invalid parameter 'pid'")
	}
	if rec.finished {
		return struct{}{}, nil
	}
	if sig == syscall.SIGKILL {
		rec.stopFlowControl()
	}
	if err := syscall.Kill(-int(rec.pid), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return nil, sdk.Errorf("guest-exec-terminate: signal %d to process group %d: %v", sig, rec.pid, err)
	}
	e.log.Info("guest-exec-terminate", "pid", rec.pid, "signal", int(sig))
	return struct{}{}, nil
}

type readArgs struct {
	Pid       int64    `json:"pid"`
	OutOffset int64    `json:"out-offset,omitempty"`
	ErrOffset int64    `json:"err-offset,omitempty"`
	MaxBytes  *int     `json:"max-bytes"`
	Wait      *float64 `json:"wait"`
}

// readReply is guest-exec-read's result.
type readReply struct {
	execStatus
	OutOffset *int64 `json:"out-offset,omitempty"`
	ErrOffset *int64 `json:"err-offset,omitempty"`
}

// handleRead returns the output of each captured stream from its offset.
// With wait it blocks until output arrives, the process ends, or wait
// passes, so a host shows output as it comes without polling. The reply
// with exited true carries the last bytes and the exit status, and frees
// the record (as guest-exec-status's does).
func (e *execer) handleRead(ctx context.Context, call *sdk.Call) (any, error) {
	var a readArgs
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	limit := defaultReadBytes
	if a.MaxBytes != nil {
		if *a.MaxBytes < 1 {
			return nil, sdk.Errorf("Parameter 'max-bytes' must be at least 1")
		}
		limit = min(*a.MaxBytes, maxReadBytes)
	}
	var wait time.Duration
	if a.Wait != nil {
		if !(*a.Wait >= 0) {
			return nil, sdk.Errorf("Parameter 'wait' must be a number of seconds, 0 or more")
		}
		wait = min(time.Duration(*a.Wait*float64(time.Second)), maxReadWait)
	}
	if a.OutOffset < 0 || a.ErrOffset < 0 {
		return nil, sdk.Errorf("Parameter 'out-offset' and 'err-offset' must not be negative")
	}
	rec, err := e.lookup(a.Pid)
	if err != nil {
		return nil, err
	}
	var timer <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timer = t.C
	}
	for {
		reply, more, changed, err := e.readOnce(rec, a, limit)
		if err != nil || reply.Exited || more || timer == nil || reply.OutData != nil || reply.ErrData != nil {
			return reply, err
		}
		// Nothing yet: wait for output on either stream or the end.
		cases := append(changed, rec.done)
		if waitAny(ctx, timer, cases) {
			timer = nil // one last look, then answer
		}
	}
}

// readOnce reads both streams once. more is true when bytes are held past
// what is returned; changed are the channels that signal new output.
func (e *execer) readOnce(rec *record, a readArgs, limit int) (*readReply, bool, []<-chan struct{}, error) {
	finished := isClosed(rec.done)
	reply := &readReply{}
	more := false
	var changed []<-chan struct{}
	for _, s := range []struct {
		c      *capture
		offset int64
		name   string
		data   **string
		trunc  **bool
		next   **int64
	}{
		{rec.out, a.OutOffset, "out-offset", &reply.OutData, &reply.OutTruncated, &reply.OutOffset},
		{rec.err, a.ErrOffset, "err-offset", &reply.ErrData, &reply.ErrTruncated, &reply.ErrOffset},
	} {
		if s.c == nil {
			continue
		}
		ch, wake, ok := s.c.readAt(s.offset, limit)
		if !ok {
			return nil, false, nil, sdk.Errorf("Parameter '%s' is past the end of the output", s.name)
		}
		next := ch.next
		*s.next = &next
		if len(ch.data) > 0 {
			d := base64.StdEncoding.EncodeToString(ch.data)
			*s.data = &d
		}
		if ch.truncated {
			t := true
			*s.trunc = &t
		}
		more = more || ch.more
		if !ch.eof {
			changed = append(changed, wake)
		}
	}
	if finished && !more {
		// The last bytes and the status together; the record goes, as
		// with guest-exec-status.
		e.mu.Lock()
		if e.procs[rec.pid] == rec {
			delete(e.procs, rec.pid)
			if rec.expire != nil {
				rec.expire.Stop()
			}
		}
		e.mu.Unlock()
		reply.Exited = true
		rec.exitStatus(&reply.execStatus)
	}
	return reply, more, changed, nil
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// waitAny waits until one of cases is closed or ctx ends (false), or the
// timer fires (true).
func waitAny(ctx context.Context, timer <-chan time.Time, cases []<-chan struct{}) bool {
	fired := make(chan struct{})
	stop := make(chan struct{})
	defer close(stop)
	for _, c := range cases {
		go func() {
			select {
			case <-c:
				select {
				case fired <- struct{}{}:
				case <-stop:
				}
			case <-stop:
			}
		}()
	}
	select {
	case <-fired:
		return false
	case <-ctx.Done():
		return true
	case <-timer:
		return true
	}
}

// handleWrite writes input-data to the stdin of an input-pipe guest-exec
// and closes it when asked. A child that reads nothing fills the pipe: the
// write then answers after writeWait with the count that went through, and
// the host sends the rest later.
func (e *execer) handleWrite(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Pid       int64   `json:"pid"`
		InputData *string `json:"input-data"`
		Close     bool    `json:"close,omitempty"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	data := call.Blob
	if a.InputData != nil && data == nil {
		var err error
		if data, err = qemuBase64Decode(*a.InputData); err != nil {
			return nil, err
		}
	}
	rec, err := e.lookup(a.Pid)
	if err != nil {
		return nil, err
	}
	if rec.stdin == nil {
		return nil, sdk.Errorf("guest-exec-write: process %d was not started with input-pipe", a.Pid)
	}
	rec.stdinMu.Lock()
	n := 0
	if len(data) > 0 {
		_ = rec.stdin.SetWriteDeadline(time.Now().Add(writeWait))
		n, err = rec.stdin.Write(data)
	}
	rec.stdinMu.Unlock()
	switch {
	case errors.Is(err, os.ErrClosed):
		return nil, sdk.Errorf("guest-exec-write: the input of process %d is closed", a.Pid)
	case errors.Is(err, syscall.EPIPE):
		return nil, sdk.Errorf("guest-exec-write: process %d no longer reads its input", a.Pid)
	case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
		return nil, sdk.Errorf("guest-exec-write: %v", err)
	}
	if a.Close && n == len(data) {
		rec.closeStdin()
	}
	return map[string]int{"count": n}, nil
}

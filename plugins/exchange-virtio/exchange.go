package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Channel methods, named as qemu-ga's -m/--method.
const (
	methodVirtio    = "virtio-serial"
	methodISASerial = "isa-serial"
	methodUnix      = "unix-listen"
	methodVsock     = "vsock-listen"
)

// claimWait bounds how long Open waits for the previous instance of the same
// channel (closed just before a reopen) to let go of its device or socket.
const claimWait = 5 * time.Second

// Exchange implements sdk.Exchange for the four methods. The zero value is
// ready to use.
type Exchange struct {
	// SysfsRoot and DevRoot stand in for /sys and /dev (tests); empty means
	// the real ones.
	SysfsRoot string
	DevRoot   string

	// devReadOnly opens virtio-serial devices O_RDONLY instead of O_RDWR.
	// Tests use a FIFO, which behaves like a port on the read side (EOF and
	// POLLHUP while the writer, the "host", is away; SIGIO on changes) but
	// would be its own writer if opened O_RDWR.
	devReadOnly bool

	mu    sync.Mutex
	inUse map[string]chan struct{} // resource → closed when released
}

var _ sdk.Exchange = (*Exchange)(nil)

// Open prepares the channel and serves it in the background until ctx ends.
func (e *Exchange) Open(ctx context.Context, ch sdk.Channel, out *session.Outbox) (string, error) {
	if ch.Logger == nil {
		ch.Logger = hclog.NewNullLogger()
	}
	// A reopen after a parser restart cancels the previous instance just
	// before calling Open: wait until it has closed its listener or device,
	// or the new one would find the socket "in use" or the port busy.
	release, err := e.claim(ctx, ch.Method+" "+filepath.Clean(ch.Path))
	if err != nil {
		return "", err
	}
	var resolved string
	switch ch.Method {
	case methodUnix:
		resolved, err = e.openUnix(ctx, ch, out, release)
	case methodVsock:
		resolved, err = e.openVsock(ctx, ch, out, release)
	case methodVirtio:
		resolved, err = e.openVirtio(ctx, ch, out, release)
	case methodISASerial:
		resolved, err = e.openSerial(ctx, ch, out, release)
	default:
		err = fmt.Errorf("exchange-virtio: unknown method %q", ch.Method)
	}
	if err != nil {
		release()
		return "", err
	}
	return resolved, nil
}

// claim marks a resource as used by one open channel; the returned function
// releases it (exactly once, by the goroutine that closes the resource).
func (e *Exchange) claim(ctx context.Context, key string) (func(), error) {
	deadline := time.NewTimer(claimWait)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		if e.inUse == nil {
			e.inUse = map[string]chan struct{}{}
		}
		prev, busy := e.inUse[key]
		if !busy {
			done := make(chan struct{})
			e.inUse[key] = done
			e.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					e.mu.Lock()
					delete(e.inUse, key)
					e.mu.Unlock()
					close(done)
				})
			}, nil
		}
		e.mu.Unlock()
		select {
		case <-prev:
		case <-deadline.C:
			return nil, fmt.Errorf("%s is still held by an earlier open of this channel", key)
		case <-ctx.Done():
			return nil, fmt.Errorf("open %s: %w", key, ctx.Err())
		}
	}
}

func (e *Exchange) sysfsRoot() string {
	if e.SysfsRoot != "" {
		return e.SysfsRoot
	}
	return "/sys"
}

func (e *Exchange) devRoot() string {
	if e.DevRoot != "" {
		return e.DevRoot
	}
	return "/dev"
}

// decodeOptions decodes the channel's options into v and logs keys v does not
// know: a typo in a config must not pass silently, but the supervisor may
// hand every channel the same generic options (retry_path).
func decodeOptions(ch sdk.Channel, v any, known ...string) error {
	if err := ch.DecodeOptions(v); err != nil {
		return err
	}
	if len(ch.Options) == 0 || string(ch.Options) == "null" {
		return nil
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(ch.Options, &all); err != nil {
		return fmt.Errorf("channel %s options: %w", ch.Name, err)
	}
	var unknown []string
	for k := range all {
		found := false
		for _, kk := range known {
			found = found || k == kk
		}
		if !found {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		ch.Logger.Warn("ignoring unknown channel options", "options", unknown, "known", known)
	}
	return nil
}

// unpolledFile wraps fd in an *os.File without adding it to this process's
// netpoller: the exchange only hands the descriptor on (or polls it by hand),
// so registering it would only cost wake-ups. The open file description is
// shared with the parser and must stay non-blocking there, so O_NONBLOCK is
// restored after wrapping (os.NewFile registers only non-blocking fds, and
// File.Fd leaves such an unregistered file alone).
func unpolledFile(fd int, name string) (*os.File, error) {
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("clear O_NONBLOCK on %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := unix.SetNonblock(fd, true); err != nil {
		f.Close()
		return nil, fmt.Errorf("set O_NONBLOCK on %s: %w", name, err)
	}
	return f, nil
}

// isErrno reports whether err wraps one of the given errnos.
func isErrno(err error, errnos ...unix.Errno) bool {
	for _, n := range errnos {
		if errors.Is(err, n) {
			return true
		}
	}
	return false
}

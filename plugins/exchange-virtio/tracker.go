package main

import (
	"bytes"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// sessionTracker counts the sessions of a listener that are still alive
// although the exchange no longer holds them: it holds no reference (a kept
// copy would keep the connection open after the parser closes it), only an
// epoll registration. An epoll entry lives exactly as long as the open file
// description it watches, which the parser keeps while the session lasts, so
// the entries of this private epoll instance are the live sessions. Nothing
// ever waits on it: it costs no wake-up.
type sessionTracker struct {
	epfd   int
	fdinfo string
}

func newSessionTracker() (*sessionTracker, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("session tracker: epoll_create1: %w", err)
	}
	return &sessionTracker{epfd: epfd, fdinfo: fmt.Sprintf("/proc/self/fdinfo/%d", epfd)}, nil
}

// add starts tracking a connection (before the exchange closes its copy).
func (t *sessionTracker) add(fd int) error {
	// Level-triggered and never waited on; the events only matter to the
	// fallback count in live.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP, Fd: int32(fd)}
	if err := unix.EpollCtl(t.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("session tracker: epoll_ctl: %w", err)
	}
	return nil
}

// live returns how many tracked sessions are still open somewhere.
func (t *sessionTracker) live() (int, error) {
	// The kernel lists each registration as a "tfd:" line.
	if b, err := os.ReadFile(t.fdinfo); err == nil {
		return bytes.Count(b, []byte("\ntfd:")), nil
	}
	// Without /proc, count the ready ones: a live socket is nearly always
	// readable, writable or hung up; one that is none of these (peer not
	// reading, nothing to read) is missed, which errs towards accepting.
	events := make([]unix.EpollEvent, 256)
	n, err := unix.EpollWait(t.epfd, events, 0)
	if err != nil {
		return 0, fmt.Errorf("session tracker: epoll_wait: %w", err)
	}
	return n, nil
}

func (t *sessionTracker) close() { unix.Close(t.epfd) }

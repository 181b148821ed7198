package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// dirWatch reports changes of directory entries through inotify, so waiting
// for a device (or noticing it go) costs nothing while nothing happens.
type dirWatch struct {
	f      *os.File // the inotify instance, in the netpoller: Close ends reads
	fd     int
	events chan struct{}
}

const watchMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_ATTRIB | unix.IN_DELETE | unix.IN_MOVED_FROM |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

func newDirWatch() (*dirWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	w := &dirWatch{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, events: make(chan struct{}, 1)}
	go w.read()
	return w, nil
}

// add watches the directories that exist among dirs; adding one twice is
// harmless, so callers re-add after every event (a directory may appear
// later, e.g. /dev/virtio-ports once udev runs).
func (w *dirWatch) add(dirs ...string) {
	for _, d := range dirs {
		_, _ = unix.InotifyAddWatch(w.fd, d, watchMask|unix.IN_ONLYDIR)
	}
}

func (w *dirWatch) read() {
	buf := make([]byte, 64<<10)
	for {
		if _, err := w.f.Read(buf); err != nil {
			return // closed
		}
		// The content does not matter: the owner re-examines the paths.
		select {
		case w.events <- struct{}{}:
		default:
		}
	}
}

// Events receives a value after one or more changes.
func (w *dirWatch) Events() <-chan struct{} { return w.events }

func (w *dirWatch) close() { w.f.Close() }

// errSoon marks a not-yet-there that may resolve without a directory event
// (a virtio port whose name has not arrived from the host yet).
var errSoon = fmt.Errorf("not ready yet: %w", os.ErrNotExist)

const (
	soonInterval = 100 * time.Millisecond
	soonTries    = 20 // per directory event: bounded, never a poll loop while idle
)

// waitFor calls try after every change in dirs until it succeeds, ctx ends or
// try fails with an error other than fs.ErrNotExist.
func waitFor(ctx context.Context, log hclog.Logger, w *dirWatch, dirs func() []string, try func() error) error {
	soon := 0
	for {
		w.add(dirs()...)
		err := try()
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			return err
		}
		log.Debug("still waiting for the device", "reason", err)
		if errors.Is(err, errSoon) && soon < soonTries {
			soon++
			select {
			case <-w.Events():
				soon = 0
			case <-time.After(soonInterval):
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		select {
		case <-w.Events():
			soon = 0
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

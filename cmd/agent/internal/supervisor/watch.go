package supervisor

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The plugin directories are followed through inotify: no polling, no
// wake-up while nothing changes. A burst of events (a package unpacking a
// binary and its manifest, a copy written in pieces) settles before the
// directories are read again.
const (
	rescanSettle = 100 * time.Millisecond // quiet time after an event
	rescanMax    = 500 * time.Millisecond // at the latest after a burst's first event
)

// dirEvents are what changes a plugin directory's plugins: a file written
// and closed, renamed in or out, created (a symlink), deleted, made
// executable; and the directory itself going away.
const dirEvents = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CREATE |
	unix.IN_DELETE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// dirWatch is an inotify instance on the plugin directories, or on the
// parent of one that does not exist (yet).
type dirWatch struct {
	fd   int
	file *os.File // fd in the netpoller: a read parks the goroutine
	dirs []string
	wds  map[int32]string // watch → watched path
}

func newDirWatch(dirs []string) (*dirWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &dirWatch{fd: fd, file: os.NewFile(uintptr(fd), "inotify"), dirs: dirs, wds: map[int32]string{}}
	for _, dir := range dirs {
		w.watch(dir)
	}
	return w, nil
}

// watch follows dir, or its parent when dir does not exist.
func (w *dirWatch) watch(dir string) {
	for _, path := range []string{dir, filepath.Dir(dir)} {
		wd, err := unix.InotifyAddWatch(w.fd, path, dirEvents)
		if err == nil {
			w.wds[int32(wd)] = path
			return
		}
	}
}

func (w *dirWatch) Close() error { return w.file.Close() }

// next blocks until events come and tells whether any may change the
// plugins (an overflowed queue does: events were lost).
func (w *dirWatch) next(buf []byte) (bool, error) {
	n, err := w.file.Read(buf)
	if err != nil {
		return false, err
	}
	relevant := false
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		wd := int32(binary.NativeEndian.Uint32(buf[off:]))
		mask := binary.NativeEndian.Uint32(buf[off+4:])
		nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
		name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+nameLen]), "\x00")
		off += unix.SizeofInotifyEvent + nameLen
		if mask&unix.IN_Q_OVERFLOW != 0 {
			relevant = true
			continue
		}
		path, ok := w.wds[wd]
		if !ok {
			continue
		}
		if mask&unix.IN_IGNORED != 0 {
			// The watched directory went away: wait for it in its parent.
			delete(w.wds, wd)
			if w.isPluginDir(path) {
				w.watch(path)
				relevant = true
			}
			continue
		}
		if mask&unix.IN_MOVE_SELF != 0 {
			// Renamed away: its events would name the old path. The
			// watch's end (IN_IGNORED) makes the path watched anew.
			_, _ = unix.InotifyRmWatch(w.fd, uint32(wd))
			continue
		}
		full := filepath.Join(path, name)
		switch {
		case w.isPluginDir(path) && strings.HasPrefix(name, BinaryPrefix):
			relevant = true
		case name != "" && w.isPluginDir(full):
			// A plugin directory came (or went) in the parent watched
			// for it.
			if mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 {
				w.watch(full)
			}
			relevant = true
		}
	}
	return relevant, nil
}

func (w *dirWatch) isPluginDir(path string) bool {
	for _, d := range w.dirs {
		if d == path {
			return true
		}
	}
	return false
}

// followPluginDirs learns the plugins Load left for later, then follows the
// plugin directories until ctx ends, taking plugins up and dropping them as
// their binaries come, go and are replaced (hotplug.go).
func (s *Supervisor) followPluginDirs(ctx context.Context) {
	// Watching starts before the deferred plugins are learnt, so nothing
	// that changes meanwhile is missed: the rescan below sees it.
	w, err := newDirWatch(s.opts.PluginDirs)
	if err != nil {
		s.logger.Warn("plugin directories not followed: plugins added or removed are seen at the next start", "error", err)
	}
	if len(s.deferred) > 0 {
		s.learnDeferred(ctx)
	}
	if w == nil {
		return
	}
	go func() {
		<-ctx.Done()
		w.Close()
	}()
	changed := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			relevant, err := w.next(buf)
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, os.ErrClosed) {
					s.logger.Warn("plugin directories no longer followed", "error", err)
				}
				return
			}
			if relevant {
				select {
				case changed <- struct{}{}:
				default:
				}
			}
		}
	}()
	s.rescan(ctx)
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	var first time.Time // of the burst not yet rescanned
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			settle.Reset(max(0, min(rescanSettle, rescanMax-now.Sub(first))))
		case <-settle.C:
			first = time.Time{}
			s.rescan(ctx)
		}
	}
}

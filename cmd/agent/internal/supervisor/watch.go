package supervisor

import (
	"context"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// The plugin directories are followed through inotify (fsnotify): no
// polling, no wake-up while nothing changes. A burst of events (a package
// unpacking a binary and its manifest, a copy written in many pieces)
// settles before the directories are read again.
const (
	rescanSettle = 100 * time.Millisecond // quiet time after an event
	rescanMax    = 500 * time.Millisecond // at the latest after a burst's first event
)

// followPluginDirs learns the plugins Load left for later, then follows the
// plugin directories until ctx ends, taking plugins up and dropping them as
// their binaries come, go and are replaced (hotplug.go).
func (s *Supervisor) followPluginDirs(ctx context.Context) {
	// Watching starts before the deferred plugins are learnt, so nothing
	// that changes meanwhile is missed: the rescan below sees it.
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.logger.Warn("plugin directories not followed: plugins added or removed are seen at the next start", "error", err)
	} else {
		defer w.Close()
		for _, dir := range s.opts.PluginDirs {
			s.watchDir(w, dir)
		}
	}
	if len(s.deferred) > 0 {
		s.learnDeferred(ctx)
	}
	if w == nil {
		return
	}
	s.rescan(ctx)
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	var first time.Time // of the burst not yet rescanned
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if !s.pluginDirEvent(w, ev) {
				continue
			}
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			settle.Reset(max(0, min(rescanSettle, rescanMax-now.Sub(first))))
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			// An overflowed queue lost events: read the directories anew.
			s.logger.Warn("plugin directory watch", "error", err)
			settle.Reset(rescanSettle)
		case <-settle.C:
			first = time.Time{}
			s.rescan(ctx)
		}
	}
}

// watchDir follows dir; one that does not exist (yet) is waited for in its
// parent.
func (s *Supervisor) watchDir(w *fsnotify.Watcher, dir string) {
	if err := w.Add(dir); err == nil {
		return
	}
	if err := w.Add(filepath.Dir(dir)); err != nil {
		s.logger.Debug("plugin directory not followed: neither it nor its parent exists", "dir", dir, "error", err)
	}
}

// pluginDirEvent tells whether ev may change the plugins, and follows a
// plugin directory that was created, removed or renamed.
func (s *Supervisor) pluginDirEvent(w *fsnotify.Watcher, ev fsnotify.Event) bool {
	for _, dir := range s.opts.PluginDirs {
		switch {
		case ev.Name == dir:
			// The directory itself came (seen in its parent) or went.
			s.watchDir(w, dir)
			return true
		case filepath.Dir(ev.Name) == dir && strings.HasPrefix(filepath.Base(ev.Name), BinaryPrefix):
			return true
		}
	}
	return false
}

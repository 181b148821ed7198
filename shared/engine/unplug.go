package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// watchUnplug calls gone once the device node at path is removed or
// replaced by another device (a virtio-serial port unplugged). A port
// handed over with its host watch has no exchange left to notice: while no
// host is connected the parser waits for a SIGIO that an unplug does not
// always send, so the node's directory is followed through inotify (no
// wake-up while nothing changes there). stop ends the watch.
func watchUnplug(path string, f *os.File, gone func()) (stop func(), err error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("unplug watch: fstat %s: %w", path, err)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("unplug watch: inotify_init1: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_DELETE_SELF); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("unplug watch: %s: %w", filepath.Dir(path), err)
	}
	events := os.NewFile(uintptr(fd), "inotify") // in the netpoller: Close ends the read
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := events.Read(buf); err != nil {
				return // stopped
			}
			var now unix.Stat_t
			err := unix.Stat(path, &now)
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || (err == nil && now.Rdev != st.Rdev) {
				gone()
				return
			}
		}
	}()
	return func() { events.Close() }, nil
}

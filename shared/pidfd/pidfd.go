// Package pidfd tells when a process ends without polling: a pidfd (Linux
// 5.3) becomes readable exactly when its process exits. The supervisor uses
// it for the plugins it starts, a plugin for the supervisor that started it.
package pidfd

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Exited returns a channel closed when process pid ends. It fails when the
// kernel has no pidfd or the process is already gone (ESRCH); a caller that
// may have raced with the end of the process checks that itself.
func Exited(pid int) (<-chan struct{}, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd of process %d: %w", pid, err)
	}
	done := make(chan struct{})
	go func() {
		defer unix.Close(fd)
		defer close(done)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			// An indefinite wait: the thread sleeps in the kernel until
			// the process ends, at no cost meanwhile.
			n, err := unix.Poll(fds, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n > 0 {
				return
			}
		}
	}()
	return done, nil
}

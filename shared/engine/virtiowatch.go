package engine

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"golang.org/x/sys/unix"
)

// watchHost follows the host side of a handed-over virtio-serial port:
// virtio_console sends SIGIO to the descriptor's owner on every host connect
// and disconnect, and a zero-timeout poll tells the state (POLLHUP: no
// host). A waiting session learns of each change without polling.
func (e *Engine) watchHost(st *channelState, f *os.File, s *streamSession) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGIO) // before F_SETOWN: no change is missed
	defer signal.Stop(sig)
	rc, err := f.SyscallConn()
	if err != nil {
		e.logger.Error("virtio-serial port: no descriptor", "channel", st.cfg.Name, "error", err)
		return
	}
	var unplugged atomic.Bool
	if path, ok := strings.CutPrefix(s.origin, "virtio-serial:"); ok {
		stop, err := watchUnplug(path, f, func() {
			e.logger.Warn("virtio-serial port unplugged", "channel", st.cfg.Name, "path", path)
			unplugged.Store(true)
			// The session's next read fails and it ends (a session
			// waiting for a host is woken to read); the channel is then
			// reopened (reopenChannel).
			s.conn.Close()
			s.hostEvent(true)
		})
		if err != nil {
			e.logger.Warn("an unplugged port may go unnoticed while no host is connected", "channel", st.cfg.Name, "error", err)
		} else {
			defer stop()
		}
	}
	poll := func() (up, data bool, err error) {
		cerr := rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			for {
				// Signals (SIGIO itself, the runtime's SIGURG) interrupt.
				if _, err = unix.Poll(fds, 0); err != unix.EINTR {
					break
				}
			}
			if err == nil {
				up = fds[0].Revents&unix.POLLHUP == 0
				data = fds[0].Revents&unix.POLLIN != 0
			}
		})
		if cerr != nil {
			err = cerr
		}
		return
	}
	if cerr := rc.Control(func(fd uintptr) {
		_, err = unix.FcntlInt(fd, unix.F_SETOWN, os.Getpid())
	}); cerr != nil || err != nil {
		e.logger.Error("virtio-serial port: cannot take its SIGIO", "channel", st.cfg.Name, "error", errors.Join(cerr, err))
		return
	}
	up, _, err := poll()
	if err != nil {
		e.logger.Error("virtio-serial port: poll", "channel", st.cfg.Name, "error", err)
		return
	}
	if !up {
		s.hostEvent(false)
	}
	e.logger.Info("following the host of a handed-over virtio-serial port", "channel", st.cfg.Name, "host_connected", up)
	for {
		select {
		case <-sig:
		case <-s.done:
			return
		}
		now, data, err := poll()
		e.logger.Debug("virtio-serial SIGIO", "channel", st.cfg.Name, "host_connected", now, "data", data, "error", err)
		if err != nil {
			select {
			case <-s.done: // the session is over
			default:
				if unplugged.Load() {
					return
				}
				e.logger.Error("virtio-serial port: lost the host watch", "channel", st.cfg.Name, "error", err)
			}
			return
		}
		switch {
		case now != up:
			up = now
			e.logger.Debug("virtio-serial host state changed", "channel", st.cfg.Name, "host_connected", up)
			s.hostEvent(up)
		case up && data:
			// A disconnect and reconnect merged into one look while the
			// session waits after an EOF: wake it, it costs one read.
			s.hostEvent(true)
		case !up:
			// Still no host, yet something changed: a host may have
			// connected, written and gone between two looks. The read
			// finds its request, or an EOF at once (as the exchange's
			// watch does). up stays false: the next connect is a change.
			s.hostEvent(true)
		}
	}
}

// reopenChannel asks the supervisor to have a channel whose port was handed
// over opened again by its exchange, which waits for the device to return.
func (e *Engine) reopenChannel(channel, reason string) {
	host := e.hostClient()
	if host == nil {
		e.logger.Error("channel lost and no supervisor to reopen it", "channel", channel, "reason", reason)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if _, err := host.ReopenChannel(ctx, &pb.ReopenChannelRequest{Channel: channel, Reason: reason}); err != nil {
		e.logger.Error("channel lost and the supervisor could not be asked to reopen it", "channel", channel, "reason", reason, "error", err)
	}
}

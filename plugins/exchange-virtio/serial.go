package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/session"
	"golang.org/x/sys/unix"
)

// defaultBaud is qemu-ga's GA_CHANNEL_BAUDRATE_DEFAULT for isa-serial.
const defaultBaud = 38400

func baudConst(baud int) (uint32, bool) {
	switch baud {
	case 9600:
		return unix.B9600, true
	case 19200:
		return unix.B19200, true
	case 38400:
		return unix.B38400, true
	case 57600:
		return unix.B57600, true
	case 115200:
		return unix.B115200, true
	case 230400:
		return unix.B230400, true
	case 460800:
		return unix.B460800, true
	case 921600:
		return unix.B921600, true
	}
	return 0, false
}

func (e *Exchange) openSerial(ctx context.Context, ch sdk.Channel, out *session.Outbox, release func()) (string, error) {
	var opts deviceOptions
	if err := decodeOptions(ch, &opts, "retry_path", "baud"); err != nil {
		return "", err
	}
	if opts.Baud == 0 {
		opts.Baud = defaultBaud
	}
	speed, ok := baudConst(opts.Baud)
	if !ok {
		return "", fmt.Errorf("isa-serial: unsupported baud %d", opts.Baud)
	}
	path := ch.Path
	if path == "" {
		path = filepath.Join(e.devRoot(), "ttyS0")
	}
	var f *os.File
	open := func() error {
		var err error
		f, err = openRawTTY(path, speed)
		if err != nil {
			return err
		}
		// A serial line has no notion of a host connecting: one persistent
		// session, no host events.
		ev := session.Event{
			Type: session.EventHandoff, Channel: ch.Name, Session: ch.Name + "/serial",
			Kind: session.KindStream, Persistent: true, Origin: "isa-serial:" + path,
		}
		if err := out.Send(ev, f); err != nil {
			f.Close()
			f = nil
			return fmt.Errorf("isa-serial: hand the tty to the parser: %w", err)
		}
		ch.Logger.Info("serial port handed to the parser", "path", path, "baud", opts.Baud)
		return nil
	}
	err := open()
	if err != nil && !(opts.RetryPath && errors.Is(err, os.ErrNotExist)) {
		return "", err
	}
	var w *dirWatch
	if err != nil {
		if w, err = newDirWatch(); err != nil {
			return "", fmt.Errorf("isa-serial: %s is missing and cannot be waited for: %w", path, err)
		}
		ch.Logger.Info("waiting for the serial port (retry_path)", "path", path)
	}
	go func() {
		defer release()
		if w != nil {
			err := waitFor(ctx, ch.Logger, w, func() []string { return []string{filepath.Dir(path)} }, open)
			w.close()
			if err != nil {
				if ctx.Err() == nil {
					ch.Logger.Error("serial port unusable; channel stopped", "error", err)
				}
				return
			}
		}
		<-ctx.Done()
		f.Close()
		ch.Logger.Info("serial channel closed")
	}()
	return path, nil
}

// openRawTTY opens a tty for dumb 8-bit byte streaming, the way qemu-ga's
// ga_channel_open does for isa-serial (plus CS8, CREAD and CLOCAL: the line
// carries JSON and 0xFF resync bytes, and no modem lines exist on a virtual
// port).
func openRawTTY(path string, speed uint32) (*os.File, error) {
	// O_NONBLOCK also keeps open from waiting for a carrier.
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("isa-serial: open %s: %w", path, os.ErrNotExist)
		}
		return nil, fmt.Errorf("isa-serial: open %s: %w", path, err)
	}
	if err := makeRaw(fd, speed); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("isa-serial: %s: %w", path, err)
	}
	f, err := unpolledFile(fd, path)
	if err != nil {
		return nil, fmt.Errorf("isa-serial: %w", err)
	}
	return f, nil
}

func makeRaw(fd int, speed uint32) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		if errors.Is(err, unix.ENOTTY) {
			return fmt.Errorf("not a tty: %w", err)
		}
		return fmt.Errorf("TCGETS: %w", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.IGNPAR | unix.PARMRK | unix.INPCK | unix.ISTRIP |
		unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF | unix.IXANY | unix.IMAXBEL
	t.Oflag = 0
	t.Lflag = 0
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CBAUD
	t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL | speed
	// One byte is enough for a read to return (the fd is non-blocking anyway).
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	// What waits in the input queue predates the agent: garbage.
	if err := unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH); err != nil {
		return fmt.Errorf("TCFLSH: %w", err)
	}
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("TCSETS: %w", err)
	}
	return nil
}

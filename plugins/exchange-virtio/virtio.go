package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

const (
	// defaultVirtioName is the port name libvirt and qemu-ga agree on.
	defaultVirtioName = "org.qemu.guest_agent.0"
	// busyWait bounds retries of an open that fails with EBUSY: a virtio
	// port admits one opener, and the parser of a channel being reopened
	// may still be closing its copy.
	busyWait     = 2 * time.Second
	busyInterval = 50 * time.Millisecond
)

// deviceOptions are the options of virtio-serial and isa-serial.
type deviceOptions struct {
	// RetryPath (qemu-ga's -r/--retry-path): when the device is missing at
	// open, the channel opens anyway and waits for it (inotify).
	RetryPath bool `json:"retry_path"`
	Baud      int  `json:"baud"` // isa-serial only; qemu-ga uses 38400
	// HandOverPort (virtio-serial, default true): hand the port to the
	// parser entirely, its SIGIO included; the parser then follows host
	// connects itself and this exchange, with nothing left to do, is
	// stopped (one process, ≈ 16 MiB, less). false keeps the watch here.
	HandOverPort *bool `json:"hand_over_port"`
}

// virtioTarget is what a virtio-serial channel asks for: a device path, a
// port name to find through sysfs, or both (the udev symlink
// /dev/virtio-ports/NAME, with sysfs as the fallback where no udev runs, as
// in an initramfs).
type virtioTarget struct {
	path string
	name string
}

func (e *Exchange) virtioTarget(p string) virtioTarget {
	switch {
	case p == "":
		return virtioTarget{path: filepath.Join(e.devRoot(), "virtio-ports", defaultVirtioName), name: defaultVirtioName}
	case !strings.Contains(p, "/"):
		return virtioTarget{path: filepath.Join(e.devRoot(), "virtio-ports", p), name: p}
	case filepath.Base(filepath.Dir(p)) == "virtio-ports":
		return virtioTarget{path: p, name: filepath.Base(p)}
	default:
		return virtioTarget{path: p}
	}
}

func (t virtioTarget) String() string {
	if t.name == "" {
		return t.path
	}
	return fmt.Sprintf("%s (port name %q)", t.path, t.name)
}

// resolveVirtio finds the device node of the target; the error wraps
// fs.ErrNotExist when it is simply not there (yet).
func (e *Exchange) resolveVirtio(t virtioTarget) (string, error) {
	if _, err := os.Stat(t.path); err == nil {
		return t.path, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("virtio-serial: %w", err)
	}
	if t.name == "" {
		return "", fmt.Errorf("virtio-serial: no device %s: %w", t.path, os.ErrNotExist)
	}
	return e.portByName(t.name)
}

// portByName looks the port up in /sys/class/virtio-ports/*/name and returns
// /dev/<vportNpM>.
func (e *Exchange) portByName(name string) (string, error) {
	class := filepath.Join(e.sysfsRoot(), "class", "virtio-ports")
	ports, err := os.ReadDir(class)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("virtio-serial: %w", err)
	}
	pending := false
	for _, port := range ports {
		// virtio_console creates the "name" attribute only when the name
		// arrives from the host, after the device node: until then the
		// port may still turn out to be ours.
		b, err := os.ReadFile(filepath.Join(class, port.Name(), "name"))
		got := strings.TrimSpace(string(b))
		if err != nil || got == "" || got == "(null)" {
			pending = true
			continue
		}
		if got != name {
			continue
		}
		dev := filepath.Join(e.devRoot(), port.Name())
		if _, err := os.Stat(dev); err != nil {
			return "", fmt.Errorf("virtio-serial: port %q is %s, but: %w", name, port.Name(), errSoon)
		}
		return dev, nil
	}
	if pending {
		return "", fmt.Errorf("virtio-serial: no port named %q in %s (some have no name yet): %w", name, class, errSoon)
	}
	return "", fmt.Errorf("virtio-serial: no port named %q in %s (is virtio_console loaded and the port defined on the host?): %w",
		name, class, os.ErrNotExist)
}

// virtioPort serves one virtio-serial channel: one persistent session, the
// port's descriptor, handed to the parser once per open of the device.
//
// Host state: on a virtio console port read returns 0 and poll reports
// POLLHUP while no host process is connected to the chardev, so neither the
// parser nor this plugin can wait for the host by polling the descriptor.
// Instead the exchange owns the descriptor's signal-driven I/O (F_SETOWN +
// O_ASYNC): virtio_console sends SIGIO to the owner when the host connects or
// disconnects (VIRTIO_CONSOLE_PORT_OPEN), when data arrives and on unplug.
// On each SIGIO a zero-timeout poll tells the current state, and a change is
// sent to the parser as EventHostConnected/EventHostDisconnected. While idle
// nothing runs: no timer, no poll loop.
type virtioPort struct {
	e      *Exchange
	ch     sdk.Channel
	log    hclog.Logger
	out    *session.Outbox
	target virtioTarget
	id     string
	watch  *dirWatch // nil without inotify
	sig    chan os.Signal
	// handOver: the port and its SIGIO go to the parser (HandOverPort).
	handOver bool

	path      string
	f         *os.File // nil while waiting for the device
	st        unix.Stat_t
	connected bool
}

func (e *Exchange) openVirtio(ctx context.Context, ch sdk.Channel, out *session.Outbox, release func()) (string, error) {
	var opts deviceOptions
	if err := decodeOptions(ch, &opts, "retry_path", "hand_over_port"); err != nil {
		return "", err
	}
	p := &virtioPort{
		e: e, ch: ch, log: ch.Logger, out: out,
		target:   e.virtioTarget(ch.Path),
		id:       ch.Name + "/port",
		sig:      make(chan os.Signal, 1),
		handOver: opts.HandOverPort == nil || *opts.HandOverPort,
	}
	w, err := newDirWatch()
	if err != nil {
		p.log.Warn("no inotify: an unplugged port will not be reopened", "error", err)
	} else {
		p.watch = w
	}
	// Subscribe before any O_ASYNC is set, so no SIGIO is ever lost.
	signal.Notify(p.sig, unix.SIGIO)
	if p.watch != nil {
		p.watch.add(p.dirs()...)
	}
	resolved := p.target.path
	err = p.acquire(ctx)
	if err != nil && ch.WaitForDevice && errors.Is(err, os.ErrNotExist) && p.watch != nil {
		// Lost after a hand-over: the parser has no port until it is
		// back, and the supervisor waits for this answer.
		p.log.Info("waiting for the virtio-serial port to come back", "target", p.target.String(), "reason", err)
		err = waitFor(ctx, p.log, p.watch, p.dirs, func() error { return p.acquire(ctx) })
	}
	if err != nil {
		if !opts.RetryPath || !errors.Is(err, os.ErrNotExist) || p.watch == nil {
			p.stop()
			return "", err
		}
		p.log.Info("waiting for the virtio-serial port (retry_path)", "target", p.target.String(), "reason", err)
	} else {
		resolved = p.path
		if p.handOver {
			p.finishHandOver()
			release()
			return resolved, nil
		}
	}
	go p.run(ctx, release)
	return resolved, nil
}

// finishHandOver lets go of a port handed to the parser with its SIGIO:
// O_ASYNC stays set on the description the parser shares.
func (p *virtioPort) finishHandOver() {
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
	signal.Stop(p.sig)
	if p.watch != nil {
		p.watch.close()
		p.watch = nil
	}
	p.log.Info("virtio-serial port handed to the parser with its host watch", "path", p.path)
}

// dirs are the directories whose changes may make the target appear or go.
func (p *virtioPort) dirs() []string {
	d := []string{p.e.devRoot(), filepath.Dir(p.target.path)}
	if p.path != "" {
		if real, err := filepath.EvalSymlinks(p.path); err == nil {
			d = append(d, filepath.Dir(real))
		}
	}
	return d
}

func (p *virtioPort) run(ctx context.Context, release func()) {
	defer func() {
		p.stop()
		p.log.Info("virtio-serial channel closed")
		release()
	}()
	var changes <-chan struct{}
	if p.watch != nil {
		changes = p.watch.Events()
	}
	for {
		if p.f == nil {
			if p.watch == nil {
				p.log.Error("virtio-serial port lost and cannot be waited for (no inotify); channel stopped")
				return
			}
			if err := waitFor(ctx, p.log, p.watch, p.dirs, func() error { return p.acquire(ctx) }); err != nil {
				if ctx.Err() == nil {
					p.log.Error("virtio-serial port unusable; channel stopped", "error", err)
				}
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.sig:
			p.check()
		case <-changes:
			if p.gone() {
				p.log.Warn("virtio-serial port unplugged; waiting for it to come back", "path", p.path)
				p.closeDevice()
			}
		}
	}
}

// acquire resolves and opens the device, takes over its SIGIO and hands it
// to the parser.
func (p *virtioPort) acquire(ctx context.Context) error {
	path, err := p.e.resolveVirtio(p.target)
	if err != nil {
		return err
	}
	flags := unix.O_RDWR
	if p.e.devReadOnly {
		flags = unix.O_RDONLY
	}
	var fd int
	for start := time.Now(); ; {
		// O_NONBLOCK: the parser shares this open file description and
		// relies on its netpoller; a blocking read would pin a thread and
		// could not be interrupted by closing the session.
		fd, err = unix.Open(path, flags|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err == nil {
			break
		}
		if errors.Is(err, unix.EBUSY) && time.Since(start) < busyWait && sdk.Sleep(ctx, busyInterval) {
			continue
		}
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("virtio-serial: %s is busy (another process, e.g. qemu-ga, has it open): %w", path, err)
		}
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("virtio-serial: open %s: %w", path, os.ErrNotExist)
		}
		return fmt.Errorf("virtio-serial: open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return fmt.Errorf("virtio-serial: fstat %s: %w", path, err)
	}
	if err := setAsync(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("virtio-serial: SIGIO on %s: %w", path, err)
	}
	f, err := unpolledFile(fd, path)
	if err != nil {
		return fmt.Errorf("virtio-serial: %w", err)
	}
	p.f, p.path, p.st = f, path, st
	// The state after O_ASYNC: any later change raises a SIGIO that is
	// already subscribed to.
	rev, err := pollNow(fd)
	if err != nil {
		p.closeDevice()
		return fmt.Errorf("virtio-serial: poll %s: %w", path, err)
	}
	p.connected = rev&unix.POLLHUP == 0
	ev := session.Event{
		Type: session.EventHandoff, Channel: p.ch.Name, Session: p.id,
		Kind: session.KindStream, Persistent: true, Origin: "virtio-serial:" + path,
		WatchHost: p.handOver,
	}
	if err := p.out.Send(ev, f); err != nil {
		p.closeDevice()
		return fmt.Errorf("virtio-serial: hand the port to the parser: %w", err)
	}
	if !p.connected {
		// The parser assumes a connected host; it would find out from an
		// EOF anyway, this only saves it one read.
		p.send(session.EventHostDisconnected)
	}
	p.log.Info("virtio-serial port handed to the parser", "path", path, "host_connected", p.connected)
	return nil
}

// check runs after a SIGIO: it reads the host state and tells the parser.
func (p *virtioPort) check() {
	if p.f == nil {
		return
	}
	rev, err := pollNow(int(p.f.Fd()))
	if err != nil {
		p.log.Error("poll on the virtio-serial port failed", "error", err)
		return
	}
	hup := rev&unix.POLLHUP != 0
	switch {
	case hup && p.gone():
		p.log.Warn("virtio-serial port unplugged; waiting for it to come back", "path", p.path)
		p.closeDevice()
	case hup && p.connected:
		p.connected = false
		p.log.Debug("host disconnected from the virtio-serial port")
		p.send(session.EventHostDisconnected)
	case hup && !p.connected:
		// No host now, but something changed: a host may have connected,
		// written a request and gone between two looks (fire-and-forget,
		// printf ... | socat). Wake the parser to read what it left: qemu-ga
		// runs such a request at once, not when the next host comes. With
		// nothing left the read ends in EOF at once.
		p.log.Trace("host state changed and back between two looks: waking the parser")
		p.send(session.EventHostConnected)
	case !hup && !p.connected:
		p.connected = true
		p.log.Debug("host connected to the virtio-serial port")
		p.send(session.EventHostConnected)
	case !hup && rev&unix.POLLIN != 0:
		// Data is waiting and the host is connected. Either the parser is
		// just about to read it, or the host went away and came back
		// between two looks (both SIGIOs merged) while the parser saw the
		// EOF and now waits for a reconnect it would otherwise never hear
		// of. Re-announcing costs the parser at most one extra read.
		p.log.Trace("data pending, host connected: re-announcing")
		p.send(session.EventHostConnected)
	}
}

// gone reports whether the device node was removed or replaced (unplug).
func (p *virtioPort) gone() bool {
	if p.f == nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Stat(p.path, &st); err != nil {
		return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)
	}
	return st.Dev != p.st.Dev || st.Ino != p.st.Ino || st.Rdev != p.st.Rdev
}

func (p *virtioPort) send(typ string) {
	ev := session.Event{Type: typ, Channel: p.ch.Name, Session: p.id}
	if err := p.out.Send(ev, nil); err != nil {
		p.log.Debug("host event not delivered; the parser is gone", "event", typ, "error", err)
	}
}

// closeDevice gives up this process's copy of the port. The parser's copy
// ends with its session.
func (p *virtioPort) closeDevice() {
	if p.f == nil {
		return
	}
	// O_ASYNC lives on the description the parser still shares: stop the
	// kernel signalling a process that no longer watches.
	_ = setAsync(int(p.f.Fd()), false)
	p.f.Close()
	p.f = nil
}

func (p *virtioPort) stop() {
	p.closeDevice()
	signal.Stop(p.sig)
	if p.watch != nil {
		p.watch.close()
	}
}

// setAsync turns signal-driven I/O (SIGIO to this process) on or off.
func setAsync(fd int, on bool) error {
	if on {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETOWN, os.Getpid()); err != nil {
			return fmt.Errorf("F_SETOWN: %w", err)
		}
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("F_GETFL: %w", err)
	}
	if on {
		fl |= unix.O_ASYNC
	} else {
		fl &^= unix.O_ASYNC
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl); err != nil {
		return fmt.Errorf("F_SETFL: %w", err)
	}
	return nil
}

// pollNow returns the descriptor's poll events without waiting.
func pollNow(fd int) (int16, error) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if fds[0].Revents&unix.POLLNVAL != 0 {
			return 0, errors.New("descriptor not open")
		}
		return fds[0].Revents, nil
	}
}

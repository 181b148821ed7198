package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/session"
	"golang.org/x/sys/unix"
)

// openPty returns the master of a new pty pair and the slave's path: the
// slave stands in for /dev/ttyS0.
func openPty(t *testing.T) (*os.File, string) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Skipf("no pty support here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil { // unlockpt
		unix.Close(fd)
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN) // ptsname
	if err != nil {
		unix.Close(fd)
		t.Fatalf("ptsname: %v", err)
	}
	master := os.NewFile(uintptr(fd), "ptmx")
	t.Cleanup(func() { master.Close() })
	return master, "/dev/pts/" + strconv.Itoa(n)
}

func TestISASerial(t *testing.T) {
	master, slave := openPty(t)
	p := newParserSide(t)
	e := &Exchange{}
	resolved, _ := open(t, e, p, channel(t, methodISASerial, slave, map[string]any{"baud": 115200}))
	if resolved != slave {
		t.Errorf("resolved %q", resolved)
	}
	r := p.next(5 * time.Second)
	defer r.f.Close()
	if r.ev.Type != session.EventHandoff || !r.ev.Persistent || r.ev.Kind != session.KindStream || r.ev.Origin != "isa-serial:"+slave {
		t.Fatalf("handoff %+v", r.ev)
	}

	// Raw mode, as qemu-ga sets it.
	tio, err := unix.IoctlGetTermios(int(r.f.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG|unix.IEXTEN) != 0 {
		t.Errorf("lflag %#o: canonical/echo/signals still on", tio.Lflag)
	}
	if tio.Iflag&(unix.ICRNL|unix.IXON|unix.ISTRIP|unix.INLCR|unix.IGNCR) != 0 {
		t.Errorf("iflag %#o: input translation still on", tio.Iflag)
	}
	if tio.Oflag&unix.OPOST != 0 {
		t.Errorf("oflag %#o: output processing still on", tio.Oflag)
	}
	if tio.Cflag&unix.CSIZE != unix.CS8 || tio.Cflag&unix.PARENB != 0 || tio.Cflag&unix.CBAUD != unix.B115200 {
		t.Errorf("cflag %#o: want CS8, no parity, B115200", tio.Cflag)
	}
	if tio.Cc[unix.VMIN] != 1 || tio.Cc[unix.VTIME] != 0 {
		t.Errorf("VMIN %d VTIME %d", tio.Cc[unix.VMIN], tio.Cc[unix.VTIME])
	}

	// Bytes flow unchanged both ways: CR, LF, ^C, ^S, 0xFF (the resync byte)
	// and 8-bit data all pass.
	in := "{\"execute\":\"guest-ping\"}\r\n\x03\x13\xff\xfe"
	if _, err := master.Write([]byte(in)); err != nil {
		t.Fatal(err)
	}
	if got := readFull(t, r.f, len(in)); string(got) != in {
		t.Errorf("parser read %q, want %q", got, in)
	}
	outMsg := "{\"return\":{}}\n\xff"
	if _, err := r.f.Write([]byte(outMsg)); err != nil {
		t.Fatal(err)
	}
	if got := readFull(t, master, len(outMsg)); string(got) != outMsg {
		t.Errorf("host read %q, want %q (no CR added)", got, outMsg)
	}
	// A serial line has no host events.
	p.none(200 * time.Millisecond)
}

func TestISASerialDefaultsAndErrors(t *testing.T) {
	p := newParserSide(t)
	dir := t.TempDir()
	e := &Exchange{DevRoot: dir}
	// Default path: <dev>/ttyS0, missing here.
	if _, err := e.Open(context.Background(), channel(t, methodISASerial, "", nil), p.out); err == nil ||
		!strings.Contains(err.Error(), filepath.Join(dir, "ttyS0")) {
		t.Errorf("missing default tty: %v", err)
	}
	// Not a tty.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Open(context.Background(), channel(t, methodISASerial, file, nil), p.out); err == nil ||
		!strings.Contains(err.Error(), "not a tty") {
		t.Errorf("regular file: %v", err)
	}
	if _, err := e.Open(context.Background(), channel(t, methodISASerial, file, map[string]any{"baud": 1234}), p.out); err == nil {
		t.Errorf("baud 1234 accepted")
	}
	waitIdle(t, e)
}

func TestISASerialRetryPath(t *testing.T) {
	master, slave := openPty(t)
	p := newParserSide(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "ttyS0")
	e := &Exchange{DevRoot: dir}
	open(t, e, p, channel(t, methodISASerial, "", map[string]any{"retry_path": true}))
	p.none(200 * time.Millisecond)
	// The device appears (a symlink to the pty here).
	if err := os.Symlink(slave, path); err != nil {
		t.Fatal(err)
	}
	r := p.next(5 * time.Second)
	defer r.f.Close()
	if r.ev.Type != session.EventHandoff || r.ev.Origin != "isa-serial:"+path {
		t.Fatalf("got %+v", r.ev)
	}
	if _, err := master.Write([]byte("x\r")); err != nil {
		t.Fatal(err)
	}
	if got := readFull(t, r.f, 2); string(got) != "x\r" {
		t.Errorf("read %q", got)
	}
}

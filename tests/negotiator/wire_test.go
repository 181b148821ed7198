// Package negotiator tests negotiator's two channels end to end with the
// built binaries: guest-agent (its negotiator dialect, its host client and
// relay) and guestctl (negotiator and daemon), over real unix sockets. The
// peers here are written from the protocol text of issue 13 (an ASCII
// length, "\n", that many bytes of JSON), not from shared/negotiator.
package negotiator

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// frameConn speaks the framing by hand.
type frameConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialFrames(t *testing.T, path string) *frameConn {
	t.Helper()
	var c net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err = net.Dial("unix", path); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return &frameConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (f *frameConn) raw(s string) {
	f.t.Helper()
	if _, err := io.WriteString(f.c, s); err != nil {
		f.t.Fatal(err)
	}
}

func (f *frameConn) send(v any) {
	f.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		f.t.Fatal(err)
	}
	f.raw(strconv.Itoa(len(b)) + "\n" + string(b))
}

// read returns one frame's body; every byte of it must be ASCII.
func (f *frameConn) read() []byte {
	f.t.Helper()
	f.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := f.r.ReadString('\n')
	if err != nil {
		f.t.Fatalf("length line: %v", err)
	}
	n, err := strconv.Atoi(strings.TrimSuffix(line, "\n"))
	if err != nil || n < 0 {
		f.t.Fatalf("length line %q", line)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(f.r, body); err != nil {
		f.t.Fatalf("body of %d bytes: %v", n, err)
	}
	for i, c := range body {
		if c >= 0x80 {
			f.t.Fatalf("non-ASCII byte at %d of %.200q", i, body)
		}
	}
	return body
}

type reply struct {
	Success *bool           `json:"success"`
	Result  json.RawMessage `json:"result"`
	Error   string          `json:"error"`
}

func (f *frameConn) reply() reply {
	f.t.Helper()
	body := f.read()
	var r reply
	if err := json.Unmarshal(body, &r); err != nil || r.Success == nil {
		f.t.Fatalf("reply %.200q: %v", body, err)
	}
	return r
}

func (f *frameConn) output() string {
	f.t.Helper()
	r := f.reply()
	var s string
	if !*r.Success || json.Unmarshal(r.Result, &s) != nil {
		f.t.Fatalf("want a string result, got success=%v result=%.200s error=%q", *r.Success, r.Result, r.Error)
	}
	return s
}

func (f *frameConn) failure(contains string) {
	f.t.Helper()
	if r := f.reply(); *r.Success || !strings.Contains(r.Error, contains) {
		f.t.Fatalf("want an error containing %q, got success=%v result=%.200s error=%q", contains, *r.Success, r.Result, r.Error)
	}
}

// virtioPipe stands for QEMU's virtio-serial port: the host side is a unix
// socket QEMU listens on (the daemon connects once and stays), the guest
// side is the port that guest programs open and close; bytes flow between
// whichever guest opener there is and the host's connection.
type virtioPipe struct {
	hostSide, guestSide string
}

func newVirtioPipe(t *testing.T, hostSide, guestSide string) *virtioPipe {
	t.Helper()
	hl, err := net.Listen("unix", hostSide)
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("unix", guestSide)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hl.Close(); gl.Close() })
	hostConn := make(chan net.Conn, 1)
	go func() {
		c, err := hl.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { c.Close() })
		hostConn <- c
	}()
	go func() {
		host := <-hostConn
		var mu sync.Mutex
		var current net.Conn // the guest program that has the port open
		go func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := host.Read(buf)
				mu.Lock()
				if n > 0 && current != nil {
					current.Write(buf[:n])
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		for {
			g, err := gl.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			current = g
			mu.Unlock()
			io.Copy(host, g)
			mu.Lock()
			current = nil
			mu.Unlock()
			g.Close()
		}
	}()
	return &virtioPipe{hostSide: hostSide, guestSide: guestSide}
}

// hostCommands writes the host's command directory.
func hostCommands(t *testing.T) string {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"whoami":  "#!/bin/sh\necho \"$NEGOTIATOR_GUEST\"\n",
		"upper":   "#!/bin/sh\ntr a-z A-Z\n",
		"fails":   "#!/bin/sh\necho 'disk on fire' >&2; exit 7\n",
		"unicode": "#!/bin/sh\nprintf '\\342\\234\\223 d\\303\\251j\\303\\240 vu'\n",
		"big":     "#!/bin/sh\nhead -c 1200000 /dev/zero | tr '\\0' z\n",
		"pause":   "#!/bin/sh\nsleep 0.3; echo \"$1\"\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func startProcess(t *testing.T, name string, args ...string) *harness.SyncBuffer {
	t.Helper()
	log := &harness.SyncBuffer{}
	cmd := exec.Command(filepath.Join(harness.BinDir(t), name), args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop on SIGINT", name)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, log.String())
		}
	})
	return log
}

// run runs a binary and returns its stdout, stderr and exit status.
func run(t *testing.T, stdin string, name string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(harness.BinDir(t), name), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out.String(), errb.String(), code
}

var _ = fmt.Sprint

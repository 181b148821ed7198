package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// responder is a minimal qga agent on a unix socket: it answers
// guest-sync-delimited and guest-ping, and nothing else, so that what is
// measured is guestctl.
type responder struct{ l net.Listener }

func startResponder(path string) *responder {
	l, err := net.Listen("unix", path)
	if err != nil {
		fail(err)
	}
	r := &responder{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serveResponder(c)
		}
	}()
	return r
}

func serveResponder(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		line = bytes.TrimLeft(line, "\xff")
		var req struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
			ID        json.RawMessage `json:"id"`
		}
		if json.Unmarshal(line, &req) != nil {
			continue
		}
		var reply []byte
		switch req.Execute {
		case "guest-sync-delimited":
			var a struct {
				ID json.RawMessage `json:"id"`
			}
			_ = json.Unmarshal(req.Arguments, &a)
			reply = fmt.Appendf(nil, "\xff{\"return\": %s}\n", a.ID)
		case "guest-ping":
			if req.ID != nil {
				reply = fmt.Appendf(nil, "{\"return\": {}, \"id\": %s}\n", req.ID)
			} else {
				reply = []byte("{\"return\": {}}\n")
			}
		default:
			reply = fmt.Appendf(nil, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no\"}, \"id\": %s}\n", req.ID)
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

// benchGuestctlAll: guestctl --all ping over n simulated guests (a
// directory of sockets): wall time and guestctl's peak RSS.
func benchGuestctlAll(bin string, n int) {
	dir := tempDir()
	defer os.RemoveAll(dir)
	var rs []*responder
	for i := range n {
		rs = append(rs, startResponder(filepath.Join(dir, fmt.Sprintf("vm%03d.sock", i))))
	}
	defer func() {
		for _, r := range rs {
			r.l.Close()
		}
	}()
	var walls []float64
	var peak int64
	for range 5 {
		cmd := exec.Command(filepath.Join(bin, "guestctl"), "--socket-dir", dir, "--all", "ping")
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = os.Stderr
		start := time.Now()
		if err := cmd.Start(); err != nil {
			fail(fmt.Errorf("guestctl --all ping: %w", err))
		}
		// The peak is read from the live process (VmHWM): the rusage of
		// a child started with vfork counts the bench's own memory.
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var hwm int64
	follow:
		for {
			if v := vmHWM(cmd.Process.Pid); v > hwm {
				hwm = v
			}
			select {
			case err := <-done:
				if err != nil {
					fail(fmt.Errorf("guestctl --all ping: %w", err))
				}
				break follow
			case <-time.After(time.Millisecond):
			}
		}
		walls = append(walls, ms(time.Since(start)))
		peak = max(peak, hwm)
		if got := strings.Count(out.String(), "agent answered"); got != n {
			fail(fmt.Errorf("guestctl --all ping: %d of %d guests answered", got, n))
		}
	}
	fmt.Printf("%-34s %14s %14s %9s  %s\n", fmt.Sprintf("guestctl --all ping, %d guests", n),
		fmt.Sprintf("%.0f ms", pct(walls, 50)), "", "", fmt.Sprintf("median wall of 5 (max %.0f ms); target < 1 s", pct(walls, 100)))
	fmt.Printf("%-34s %14s %14s %9s  %s\n", "guestctl --all ping, peak RSS", fmt.Sprintf("%.1f MiB", float64(peak)/1024), "", "", "VmHWM, sampled every ms; target < 64 MiB")
}

// benchCp: guestctl cp of a file into each agent and back, side by side.
func benchCp(bin string, ours, ref *agent, mib int) {
	dir := tempDir()
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "src")
	data := make([]byte, mib<<20)
	if _, err := rand.Read(data); err != nil {
		fail(err)
	}
	if err := os.WriteFile(src, data, 0o644); err != nil {
		fail(err)
	}
	mbps := func(a *agent, args ...string) float64 {
		cmd := exec.Command(filepath.Join(bin, "guestctl"), append([]string{"-s", a.socket, "cp"}, args...)...)
		cmd.Stderr = os.Stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			fail(fmt.Errorf("guestctl cp %v with %s: %w", args, a.name, err))
		}
		return float64(len(data)) / 1e6 / time.Since(start).Seconds()
	}
	upA := mbps(ours, src, "guest:"+filepath.Join(dir, "up-ours"))
	upB := mbps(ref, src, "guest:"+filepath.Join(dir, "up-ref"))
	row(fmt.Sprintf("guestctl cp %d MiB in (MB/s)", mib), upA, upB, "%.0f", "verified with SHA-256 in the guest")
	downA := mbps(ours, "guest:"+filepath.Join(dir, "up-ours"), filepath.Join(dir, "down-ours"))
	downB := mbps(ref, "guest:"+filepath.Join(dir, "up-ref"), filepath.Join(dir, "down-ref"))
	row(fmt.Sprintf("guestctl cp %d MiB out (MB/s)", mib), downA, downB, "%.0f", "verified with SHA-256 in the guest")
	for _, f := range []string{"down-ours", "down-ref"} {
		got, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || !bytes.Equal(got, data) {
			fail(fmt.Errorf("guestctl cp: %s differs from what was sent", f))
		}
	}
}

// vmHWM is a process's peak resident set (KiB), 0 once it is gone.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"time"
)

// benchMonitor measures the command monitor as its clients use it: one
// connection per request (connect, write the request without a newline,
// read the reply to EOF, close); and guest-ping on the host's channel of an
// agent without the monitor, beside ours (which runs it), to show the qga
// figures do not depend on it. qemu-ga has no command monitor.
func benchMonitor(bin string, ours *agent, n int) {
	rt := monitorRoundTrips(ours.monitorSocket, n)
	fmt.Printf("%-34s %14.1f %14s\n", fmt.Sprintf("monitor round trip p50 (µs, n=%d)", n), pct(rt, 50), "-")
	fmt.Printf("%-34s %14.1f %14s %9s  %s\n", fmt.Sprintf("monitor round trip p99 (µs, n=%d)", n), pct(rt, 99), "-", "",
		"connect, request, reply, close")

	without := startOurs(bin, true, false)
	defer without.stop()
	// In alternating rounds, so that the load of this shared machine
	// falls on both alike.
	var on, off []float64
	const rounds = 10
	for range rounds {
		on = append(on, pingLatencies(ours.socket, max(n/rounds, 1))...)
		off = append(off, pingLatencies(without.socket, max(n/rounds, 1))...)
	}
	fmt.Printf("%-34s %14.1f %14.1f %8.2f×  %s\n", "guest-ping p50, monitor on / off", pct(on, 50), pct(off, 50), pct(on, 50)/pct(off, 50), "same agent binaries")
	fmt.Printf("%-34s %14.1f %14.1f %8.2f×\n", "guest-ping p99, monitor on / off", pct(on, 99), pct(off, 99), pct(on, 99)/pct(off, 99))
}

func monitorRoundTrips(socket string, n int) []float64 {
	req := []byte(`{"Command":"guest-ping"}`)
	want := []byte(`{"Status":0,"StatusMessage":""}`)
	buf := make([]byte, 0, 256)
	once := func() {
		c, err := net.Dial("unix", socket)
		if err != nil {
			fail(fmt.Errorf("monitor: %w", err))
		}
		defer c.Close()
		if _, err := c.Write(req); err != nil {
			fail(fmt.Errorf("monitor: %w", err))
		}
		buf = buf[:0]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			m, err := c.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+m]
			if err == io.EOF {
				break
			}
			if err != nil {
				fail(fmt.Errorf("monitor: read to EOF: %w (read %q)", err, buf))
			}
		}
		if !bytes.Equal(buf, want) {
			fail(fmt.Errorf("monitor: reply %q", buf))
		}
	}
	for range 200 { // warm-up
		once()
	}
	out := make([]float64, n)
	for i := range out {
		start := time.Now()
		once()
		out[i] = float64(time.Since(start).Nanoseconds()) / 1000
	}
	return out
}

// waitMonitor waits until the command monitor's socket accepts: the
// channels open one after another, the monitor's after the host's.
func waitMonitor(socket string, within time.Duration) {
	for start := time.Now(); time.Since(start) < within; time.Sleep(time.Millisecond) {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return
		}
	}
	fail(fmt.Errorf("no command monitor on %s within %s", socket, within))
}

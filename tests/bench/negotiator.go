package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/negotiator"
)

// simGuest is a simulated guest: the host side of its guest-to-host
// channel (the unix socket QEMU listens on) and the daemon's connection to
// it once made.
type simGuest struct {
	ln   net.Listener
	conn chan net.Conn
	c    net.Conn
	r    *bufio.Reader
}

func newSimGuest(path string) *simGuest {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fail(err)
	}
	g := &simGuest{ln: ln, conn: make(chan net.Conn, 1)}
	go func() {
		c, err := ln.Accept()
		if err == nil {
			g.conn <- c
		}
	}()
	return g
}

// call makes one guest-to-host call and returns its latency.
func (g *simGuest) call(body []byte) (time.Duration, error) {
	start := time.Now()
	if err := negotiator.WriteFrame(g.c, body); err != nil {
		return 0, err
	}
	reply, err := negotiator.ReadFrame(g.r, 1<<20)
	if err != nil {
		return 0, err
	}
	took := time.Since(start)
	if r, err := negotiator.DecodeReply(reply); err != nil || !r.Success {
		return 0, fmt.Errorf("reply %.200s", reply)
	}
	return took, nil
}

// benchNegotiator: guestctl daemon serving 500 simulated guests: call
// latency with all connected, the daemon's memory and threads, and how
// long 100 new guests take to be picked up (and dropped once gone).
func benchNegotiator(bin string, guests, calls int) {
	dir := tempDir()
	defer os.RemoveAll(dir)
	sockDir := filepath.Join(dir, "g")
	cmds := filepath.Join(dir, "cmds")
	_ = os.MkdirAll(sockDir, 0o755)
	_ = os.MkdirAll(cmds, 0o755)
	_ = os.WriteFile(filepath.Join(cmds, "true"), []byte("#!/bin/sh\n"), 0o755)

	sims := make([]*simGuest, guests)
	for i := range sims {
		sims[i] = newSimGuest(filepath.Join(sockDir, fmt.Sprintf("vm%04d.sock", i)))
	}
	daemon := exec.Command(filepath.Join(bin, "guestctl"), "--socket-dir", sockDir, "daemon", "--commands-dir", cmds)
	if os.Getenv("BENCH_AGENT_LOG") != "" {
		daemon.Stderr = os.Stderr
	}
	start := time.Now()
	if err := daemon.Start(); err != nil {
		fail(err)
	}
	defer stopProcess(daemon)
	connectAll := func(gs []*simGuest) time.Duration {
		for _, g := range gs {
			select {
			case g.c = <-g.conn:
				g.r = bufio.NewReaderSize(g.c, 64<<10)
			case <-time.After(30 * time.Second):
				fail(fmt.Errorf("guestctl daemon did not connect to %s within 30 s", g.ln.Addr()))
			}
		}
		return time.Since(start)
	}
	first := connectAll(sims)

	list, _ := negotiator.EncodeRequest("list_commands", nil, nil)
	builtin, _ := negotiator.EncodeRequest("execute", []any{"find-distributor-id"}, nil)
	script, _ := negotiator.EncodeRequest("execute", []any{"true"}, nil)
	measure := func(body []byte, n int) []float64 {
		lat := make([]float64, 0, n)
		for i := 0; i < n; i++ {
			took, err := sims[rand.N(len(sims))].call(body)
			if err != nil {
				fail(fmt.Errorf("negotiator call: %w", err))
			}
			lat = append(lat, float64(took.Nanoseconds())/1000)
		}
		return lat
	}
	measure(list, 200) // warm-up
	ll := measure(list, calls)
	lb := measure(builtin, calls)
	ls := measure(script, 200)

	// Every guest calling at once: one goroutine per guest, 20 calls each.
	var wg sync.WaitGroup
	burst := time.Now()
	var mu sync.Mutex
	var all []float64
	for _, g := range sims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				took, err := g.call(list)
				if err != nil {
					fail(fmt.Errorf("negotiator call: %w", err))
				}
				mu.Lock()
				all = append(all, float64(took.Nanoseconds())/1000)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	burstTook := time.Since(burst)

	rss, threads := procStatus(daemon.Process.Pid)

	// 100 new guests at once; then the same 100 gone.
	more := make([]*simGuest, 100)
	start = time.Now()
	for i := range more {
		more[i] = newSimGuest(filepath.Join(sockDir, fmt.Sprintf("new%04d.sock", i)))
	}
	pickup := connectAll(more)
	rss2, threads2 := procStatus(daemon.Process.Pid)
	start = time.Now()
	for _, g := range more {
		g.ln.Close() // unlinks the socket: the guest is gone
	}
	for _, g := range more {
		_ = g.c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := g.r.ReadByte(); err == nil {
			fail(fmt.Errorf("the daemon sent bytes to a guest that never asked"))
		}
	}
	drop := time.Since(start)

	fmt.Printf("\nnegotiator: guestctl daemon serving %d simulated guests (unix sockets, --rescan 2s)\n", guests)
	fmt.Printf("%-44s %12s  %s\n", "measure", "value", "")
	fmt.Printf("%-44s %12.1f  %s\n", fmt.Sprintf("list_commands p50 (µs, n=%d)", calls), pct(ll, 50), "target < 1000 µs")
	fmt.Printf("%-44s %12.1f\n", fmt.Sprintf("list_commands p99 (µs, n=%d)", calls), pct(ll, 99))
	fmt.Printf("%-44s %12.1f\n", "execute find-distributor-id p50 (µs, built-in)", pct(lb, 50))
	fmt.Printf("%-44s %12.1f\n", "execute find-distributor-id p99 (µs)", pct(lb, 99))
	fmt.Printf("%-44s %12.1f\n", "execute of a script p50 (µs, n=200)", pct(ls, 50))
	fmt.Printf("%-44s %12.1f  %s\n", fmt.Sprintf("all %d guests at once: p50 (µs)", guests), pct(all, 50), fmt.Sprintf("%d calls in %s", len(all), burstTook.Round(time.Millisecond)))
	fmt.Printf("%-44s %12.1f\n", fmt.Sprintf("all %d guests at once: p99 (µs)", guests), pct(all, 99))
	fmt.Printf("%-44s %12.1f  %s\n", fmt.Sprintf("daemon RSS with %d guests (MiB)", guests), float64(rss)/1024, "target < 64 MiB")
	fmt.Printf("%-44s %12d\n", "daemon threads", threads)
	fmt.Printf("%-44s %12.1f  %s\n", fmt.Sprintf("daemon RSS with %d guests (MiB)", guests+100), float64(rss2)/1024, fmt.Sprintf("%d threads", threads2))
	fmt.Printf("%-44s %12.0f\n", fmt.Sprintf("start to %d guests connected (ms)", guests), ms(first))
	fmt.Printf("%-44s %12.0f\n", "100 new guests picked up (ms)", ms(pickup))
	fmt.Printf("%-44s %12.0f\n", "100 stopped guests dropped (ms)", ms(drop))
	for _, g := range sims {
		g.ln.Close()
		g.c.Close()
	}
}

// procStatus is a process's VmRSS (KiB) and thread count.
func procStatus(pid int) (rss, threads int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss, _ = strconv.Atoi(f[1])
		case "Threads:":
			threads, _ = strconv.Atoi(f[1])
		}
	}
	return rss, threads
}

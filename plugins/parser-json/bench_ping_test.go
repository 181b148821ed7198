package main

import (
	"bufio"
	"net"
	"os"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/session"
)

// BenchmarkPingRoundTrip: one guest-ping written on a stream session of a
// real engine and its reply read back, as a host does (in process: the
// engine's part of the ping latency, without the agent's sockets), with its
// p50 and p99: compare builds with go test -bench PingRoundTrip -count N.
func BenchmarkPingRoundTrip(b *testing.B) {
	c := newEngineChannel(b, "qga", 0)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	local := os.NewFile(uintptr(fds[0]), "host")
	remote := os.NewFile(uintptr(fds[1]), "guest")
	conn, err := net.FileConn(local)
	local.Close()
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if err := c.out.Send(session.Event{Type: session.EventHandoff, Channel: "c", Session: "s", Kind: session.KindStream, Origin: "bench"}, remote); err != nil {
		b.Fatal(err)
	}
	remote.Close()
	r := bufio.NewReader(conn)
	req := []byte(`{"execute":"guest-ping","id":1}` + "\n")
	lat := make([]time.Duration, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := conn.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := r.ReadSlice('\n'); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(t0)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1000, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1000, "p99-µs")
}

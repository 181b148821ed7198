package main

import (
	"bufio"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// devStats reads /proc/net/dev of the calling thread's namespace, as
// qemu-ga's guest_get_network_stats does.
func devStats(t *testing.T) map[string]interfaceStat {
	t.Helper()
	f, err := os.Open("/proc/thread-self/net/dev")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]interfaceStat{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(rest)
		if len(fs) != 16 {
			continue
		}
		n := func(i int) uint64 {
			v, err := strconv.ParseUint(fs[i], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		out[strings.TrimSpace(name)] = interfaceStat{
			RxBytes: n(0), RxPackets: n(1), RxErrs: n(2), RxDropped: n(3),
			TxBytes: n(8), TxPackets: n(9), TxErrs: n(10), TxDropped: n(11),
		}
	}
	return out
}

func within(lo, v, hi interfaceStat) bool {
	a, b, c := reflect.ValueOf(lo), reflect.ValueOf(v), reflect.ValueOf(hi)
	for i := range a.NumField() {
		if b.Field(i).Uint() < a.Field(i).Uint() || b.Field(i).Uint() > c.Field(i).Uint() {
			return false
		}
	}
	return true
}

func TestGetInterfaces(t *testing.T) {
	tp := newTopology(t)
	var before, after map[string]interfaceStat
	var got []netInterface
	inNetns(t, tp.ns1, func() { before = devStats(t) })
	call(t, tp.ns1, "guest-network-get-interfaces", &got)
	inNetns(t, tp.ns1, func() { after = devStats(t) })

	// Statistics: the /proc/net/dev counters, read between two snapshots.
	for i := range got {
		s := got[i].Statistics
		if s == nil {
			continue
		}
		if !within(before[got[i].Name], *s, after[got[i].Name]) {
			t.Errorf("%s statistics %+v not between /proc/net/dev's %+v and %+v", got[i].Name, *s, before[got[i].Name], after[got[i].Name])
		}
		got[i].Statistics = &interfaceStat{}
	}
	stats := &interfaceStat{}
	want := []netInterface{
		{Name: "lo", HardwareAddress: "00:00:00:00:00:00", IPAddresses: []ipAddress{
			{"ipv4", "127.0.0.1", 8}, {"ipv6", "::1", 128}}, Statistics: stats},
		{Name: "ga0", HardwareAddress: "02:00:00:00:aa:01", IPAddresses: []ipAddress{
			{"ipv4", "198.51.100.1", 24}, {"ipv6", "2001:db8:1::1", 64}}, Statistics: stats},
		{Name: "gadown", HardwareAddress: "02:00:00:00:aa:03"},
		// An IPv4 alias is its own entry, as getifaddrs names it by its
		// label; /proc/net/dev has no line for it, so no statistics.
		{Name: "ga0:1", HardwareAddress: "02:00:00:00:aa:01", IPAddresses: []ipAddress{
			{"ipv4", "198.51.100.9", 24}}},
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", " ")
		w, _ := json.MarshalIndent(want, "", " ")
		t.Fatalf("interfaces:\n%s\nwant:\n%s", g, w)
	}
}

// The counters move with traffic: a UDP datagram from ns1 to ns2 leaves
// through ga0 and arrives on ga1.
func TestInterfaceStatisticsMove(t *testing.T) {
	tp := newTopology(t)
	stat := func(ns, dev string) interfaceStat {
		var ifs []netInterface
		call(t, ns, "guest-network-get-interfaces", &ifs)
		for _, i := range ifs {
			if i.Name == dev && i.Statistics != nil {
				return *i.Statistics
			}
		}
		t.Fatalf("no statistics for %s", dev)
		return interfaceStat{}
	}
	tx0, rx0 := stat(tp.ns1, "ga0"), stat(tp.ns2, "ga1")
	payload := make([]byte, 1000)
	inNetns(t, tp.ns1, func() {
		c, err := net.Dial("udp4", "198.51.100.2:9")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
	})
	// 1000 bytes of data, 8 of UDP, 20 of IP and 14 of Ethernet.
	const frame = 1000 + 8 + 20 + 14
	deadline := time.Now().Add(5 * time.Second)
	for {
		tx, rx := stat(tp.ns1, "ga0"), stat(tp.ns2, "ga1")
		if tx.TxPackets > tx0.TxPackets && tx.TxBytes-tx0.TxBytes >= frame &&
			rx.RxPackets > rx0.RxPackets && rx.RxBytes-rx0.RxBytes >= frame {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters did not move: ga0 tx %+v → %+v, ga1 rx %+v → %+v", tx0, tx, rx0, rx)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The same request to Debian's qemu-ga, run inside the same namespace, gives
// the same interfaces, addresses and hardware addresses.
func TestInterfacesMatchQemuGA(t *testing.T) {
	tp := newTopology(t)
	qga, err := exec.LookPath("qemu-ga")
	if err != nil {
		t.Skip("qemu-ga is not installed (Debian package qemu-guest-agent)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "qga.sock")
	cmd := exec.Command("ip", "netns", "exec", tp.ns1, qga, "-m", "unix-listen", "-p", sock, "-t", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var conn net.Conn
	for deadline := time.Now().Add(5 * time.Second); ; {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-ga did not listen: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(`{"execute":"guest-network-get-interfaces"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var theirs struct {
		Return []netInterface `json:"return"`
	}
	if err := json.Unmarshal(line, &theirs); err != nil || theirs.Return == nil {
		t.Fatalf("qemu-ga answered %s (%v)", line, err)
	}
	var ours []netInterface
	call(t, tp.ns1, "guest-network-get-interfaces", &ours)
	// Counters move between the two calls; compare their presence.
	for _, l := range [][]netInterface{theirs.Return, ours} {
		for i := range l {
			if l[i].Statistics != nil {
				l[i].Statistics = &interfaceStat{}
			}
		}
	}
	if !reflect.DeepEqual(ours, theirs.Return) {
		g, _ := json.Marshal(ours)
		w, _ := json.Marshal(theirs.Return)
		t.Fatalf("ours:    %s\nqemu-ga: %s", g, w)
	}
}

// ntop6 writes what glibc's inet_ntop writes.
func TestNtop6(t *testing.T) {
	for in, want := range map[string]string{
		"::":                   "::",
		"::1":                  "::1",
		"::2:3":                "::0.2.0.3",
		"::1.2.3.4":            "::1.2.3.4",
		"::ffff:1.2.3.4":       "::ffff:1.2.3.4",
		"::ffff:0:1":           "::ffff:0.0.0.1",
		"fe80::1":              "fe80::1",
		"2001:db8:0:0:1:0:0:1": "2001:db8::1:0:0:1",
		"2001:db8:0:1:1:1:1:1": "2001:db8:0:1:1:1:1:1",
		"ff02::1:ff00:1":       "ff02::1:ff00:1",
		"0:0:0:0:0:1:0:0":      "::1:0:0",
	} {
		if got := ntop6(netip.MustParseAddr(in).As16()); got != want {
			t.Errorf("ntop6(%s) = %s, want %s", in, got, want)
		}
	}
}

package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// procRoutes is qemu-ga's qmp_guest_network_get_route (qga/commands-linux.c,
// QEMU 9.1+) ported: it parses /proc/net/route and /proc/net/ipv6_route of
// the calling thread's namespace the way qemu-ga does. Flags and metrics are
// kept as the kernel's unsigned 32-bit values (qemu-ga reads them into a C
// int, which sign-extends the top bit; see the package notes).
func procRoutes(t *testing.T) []*netRoute {
	t.Helper()
	var out []*netRoute
	for i, file := range []string{"/proc/thread-self/net/route", "/proc/thread-self/net/ipv6_route"} {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		first := true
		for sc.Scan() {
			if first && i == 0 {
				first = false
				continue
			}
			fs := strings.Fields(sc.Text())
			u := func(s string, base int) uint64 {
				v, err := strconv.ParseUint(s, base, 32)
				if err != nil {
					t.Fatalf("%s: %q: %v", file, s, err)
				}
				return v
			}
			if i == 0 {
				if len(fs) != 11 {
					continue
				}
				ip4 := func(s string) string {
					v := uint32(u(s, 16))
					return fmt.Sprintf("%d.%d.%d.%d", v&0xff, v>>8&0xff, v>>16&0xff, v>>24)
				}
				d := func(s string) int64 {
					v, err := strconv.ParseInt(s, 10, 64)
					if err != nil {
						t.Fatal(err)
					}
					return v
				}
				out = append(out, &netRoute{
					Iface: fs[0], Destination: ip4(fs[1]), Gateway: ptr(ip4(fs[2])),
					Flags: ptr(u(fs[3], 16)), Refcnt: ptr(d(fs[4])), Use: ptr(d(fs[5])),
					Metric: d(fs[6]), Mask: ptr(ip4(fs[7])), Mtu: ptr(d(fs[8])),
					Window: ptr(d(fs[9])), Irtt: ptr(d(fs[10])), Version: 4,
				})
				continue
			}
			if len(fs) != 10 {
				continue // no device name: qemu-ga's sscanf does not match
			}
			ip6 := func(s string) string {
				b, err := hex.DecodeString(s)
				if err != nil || len(b) != 16 {
					t.Fatalf("%s: %q", file, s)
				}
				return netip.AddrFrom16([16]byte(b)).String()
			}
			out = append(out, &netRoute{
				Iface: fs[9], Destination: ip6(fs[0]), Desprefixlen: ptr(strconv.Itoa(int(u(fs[1], 16)))),
				Source: ptr(ip6(fs[2])), Srcprefixlen: ptr(strconv.Itoa(int(u(fs[3], 16)))),
				Nexthop: ptr(ip6(fs[4])), Metric: int64(u(fs[5], 16)), Refcnt: ptr(int64(u(fs[6], 16))),
				Use: ptr(int64(u(fs[7], 16))), Flags: ptr(u(fs[8], 16)), Version: 6,
			})
		}
		f.Close()
	}
	return out
}

func routesJSON(rs []*netRoute) string {
	var b strings.Builder
	for _, r := range rs {
		j, _ := json.Marshal(r)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

func addRoutes(t *testing.T, ns string) {
	t.Helper()
	for _, r := range [][]string{
		{"203.0.113.0/24", "via", "198.51.100.2", "metric", "5"},
		{"default", "via", "198.51.100.2"},
		{"unreachable", "198.18.0.0/15"},
		{"prohibit", "198.20.0.0/16"},
		{"blackhole", "198.21.0.0/16"},
		{"198.51.100.200/32", "dev", "ga0"},
		{"203.0.113.128/25", "dev", "ga0", "advmss", "1400", "window", "3000", "rtt", "100ms"},
		{"198.22.0.0/16", "nexthop", "via", "198.51.100.2", "dev", "ga0", "nexthop", "via", "198.51.100.3", "dev", "ga0"},
		{"198.23.0.0/16", "via", "198.51.100.2", "table", "100"}, // not in the main table
		{"-6", "2001:db8:99::/48", "via", "2001:db8:1::2", "metric", "7"},
		{"-6", "2001:db8:77::/48", "nexthop", "via", "2001:db8:1::2", "dev", "ga0", "nexthop", "via", "2001:db8:1::3", "dev", "ga0"},
		{"-6", "2001:db8:66::/48", "dev", "ga0", "table", "100"},
		{"-6", "unreachable", "2001:db8:55::/48"},
		{"-6", "prohibit", "2001:db8:57::/48"},
		{"-6", "2001:db8:56::/48", "dev", "lo"}, // promoted to a reject route
		{"-6", "2001:db8:44::/48", "via", "2001:db8:1::2", "expires", "300"},
		{"-6", "2001:db8:33::/48", "via", "2001:db8:1::2", "pref", "high"},
	} {
		args := []string{"ip", "-n", ns}
		if r[0] == "-6" {
			args, r = append(args, "-6"), r[1:]
		}
		sh(t, append(append(args, "route", "add"), r...)...)
	}
}

func TestGetRoute(t *testing.T) {
	tp := newTopology(t)
	addRoutes(t, tp.ns1)
	var got []*netRoute
	call(t, tp.ns1, "guest-network-get-route", &got)

	// What we asked for, with the values qemu-ga reports.
	find := func(dst string, version int) []*netRoute {
		var out []*netRoute
		for _, r := range got {
			if r.Destination == dst && r.Version == version {
				out = append(out, r)
			}
		}
		return out
	}
	v4 := func(iface, dst, gw, mask string, metric int64, flags uint64, mtu, window, irtt int64) *netRoute {
		return &netRoute{Iface: iface, Destination: dst, Metric: metric, Gateway: &gw, Mask: &mask,
			Irtt: &irtt, Flags: &flags, Refcnt: ptr(int64(0)), Use: ptr(int64(0)), Window: &window, Mtu: &mtu, Version: 4}
	}
	v6 := func(iface, dst, plen, nh string, metric int64, flags uint64) *netRoute {
		return &netRoute{Iface: iface, Destination: dst, Metric: metric, Flags: &flags, Refcnt: ptr(int64(1)),
			Use: ptr(int64(0)), Desprefixlen: &plen, Source: ptr("::"), Srcprefixlen: ptr("0"), Nexthop: &nh, Version: 6}
	}
	for _, c := range []struct {
		dst     string
		version int
		want    []*netRoute
	}{
		{"0.0.0.0", 4, []*netRoute{v4("ga0", "0.0.0.0", "198.51.100.2", "0.0.0.0", 0, rtfUp|rtfGateway, 0, 0, 0)}},
		{"203.0.113.0", 4, []*netRoute{v4("ga0", "203.0.113.0", "198.51.100.2", "255.255.255.0", 5, rtfUp|rtfGateway, 0, 0, 0)}},
		{"198.18.0.0", 4, []*netRoute{v4("*", "198.18.0.0", "0.0.0.0", "255.254.0.0", 0, rtfUp|rtfReject, 0, 0, 0)}},
		{"198.20.0.0", 4, []*netRoute{v4("*", "198.20.0.0", "0.0.0.0", "255.255.0.0", 0, rtfUp|rtfReject, 0, 0, 0)}},
		{"198.21.0.0", 4, []*netRoute{v4("*", "198.21.0.0", "0.0.0.0", "255.255.0.0", 0, rtfUp, 0, 0, 0)}},
		{"198.51.100.200", 4, []*netRoute{v4("ga0", "198.51.100.200", "0.0.0.0", "255.255.255.255", 0, rtfUp|rtfHost, 0, 0, 0)}},
		{"203.0.113.128", 4, []*netRoute{v4("ga0", "203.0.113.128", "0.0.0.0", "255.255.255.128", 0, rtfUp, 1440, 3000, 100)}},
		{"198.22.0.0", 4, []*netRoute{v4("ga0", "198.22.0.0", "198.51.100.2", "255.255.0.0", 0, rtfUp|rtfGateway, 0, 0, 0)}},
		{"198.23.0.0", 4, nil},
		{"198.51.100.0", 4, []*netRoute{v4("ga0", "198.51.100.0", "0.0.0.0", "255.255.255.0", 0, rtfUp, 0, 0, 0)}},
		{"2001:db8:99::", 6, []*netRoute{v6("ga0", "2001:db8:99::", "48", "2001:db8:1::2", 7, rtfUp|rtfGateway)}},
		{"2001:db8:77::", 6, []*netRoute{
			v6("ga0", "2001:db8:77::", "48", "2001:db8:1::2", 1024, rtfUp|rtfGateway),
			v6("ga0", "2001:db8:77::", "48", "2001:db8:1::3", 1024, rtfUp|rtfGateway)}},
		{"2001:db8:66::", 6, []*netRoute{v6("ga0", "2001:db8:66::", "48", "::", 1024, rtfUp)}},
		{"2001:db8:55::", 6, []*netRoute{v6("lo", "2001:db8:55::", "48", "::", 1024, rtfReject|rtfNonexthop)}},
		{"2001:db8:56::", 6, []*netRoute{v6("lo", "2001:db8:56::", "48", "::", 1024, rtfReject|rtfNonexthop)}},
		{"2001:db8:57::", 6, []*netRoute{v6("lo", "2001:db8:57::", "48", "::", 1024, rtfReject|rtfNonexthop)}},
		{"2001:db8:44::", 6, []*netRoute{v6("ga0", "2001:db8:44::", "48", "2001:db8:1::2", 1024, rtfUp|rtfGateway|rtfExpires)}},
		{"2001:db8:33::", 6, []*netRoute{v6("ga0", "2001:db8:33::", "48", "2001:db8:1::2", 1024, rtfUp|rtfGateway|1<<rtfPrefShift)}},
		{"2001:db8:1::", 6, []*netRoute{v6("ga0", "2001:db8:1::", "64", "::", 256, rtfUp)}},
		{"2001:db8:1::1", 6, []*netRoute{v6("ga0", "2001:db8:1::1", "128", "::", 0, rtfUp|rtfLocal|rtfNonexthop)}},
		{"::1", 6, []*netRoute{v6("lo", "::1", "128", "::", 0, rtfUp|rtfLocal|rtfNonexthop)}},
		{"ff00::", 6, []*netRoute{v6("ga0", "ff00::", "8", "::", 256, rtfUp)}},
	} {
		if g := find(c.dst, c.version); !reflect.DeepEqual(g, c.want) {
			t.Errorf("route %s:\n%s want:\n%s", c.dst, routesJSON(g), routesJSON(c.want))
		}
	}
	// The kernel's null entry ends main, local and table 100, which have
	// no ::/0 route of their own.
	if n := len(find("::", 6)); n != 3 {
		t.Errorf("%d null entries, want 3 (table 100, main, local)", n)
	}

	// The whole list, in order, is what qemu-ga makes of the /proc files,
	// but for IPv6's refcnt, the kernel's internal reference count, which
	// netlink does not report (we say 1).
	var proc []*netRoute
	inNetns(t, tp.ns1, func() { proc = procRoutes(t) })
	for _, r := range proc {
		if r.Version == 6 {
			r.Refcnt = ptr(int64(1))
		}
	}
	if !reflect.DeepEqual(got, proc) {
		t.Fatalf("routes:\n%s\nqemu-ga would say:\n%s", routesJSON(got), routesJSON(proc))
	}
}

// A namespace with nothing but a loopback that is down: no IPv4 route, and
// only the null entries of the IPv6 main and local tables.
func TestGetRouteEmpty(t *testing.T) {
	needRoot(t)
	ns := newNetns(t)
	sh(t, "ip", "-n", ns, "link", "set", "lo", "down")
	var got, proc []*netRoute
	call(t, ns, "guest-network-get-route", &got)
	inNetns(t, ns, func() { proc = procRoutes(t) })
	if len(got) != 2 || !reflect.DeepEqual(got, proc) {
		t.Fatalf("routes:\n%s\n/proc:\n%s", routesJSON(got), routesJSON(proc))
	}
}

func TestNoArguments(t *testing.T) {
	p := newPlugin()
	for _, cmd := range []string{"guest-network-get-interfaces", "guest-network-get-route"} {
		resp := p.Run(t.Context(), &pb.RunRequest{Command: cmd, ArgsJson: []byte(`{"x":1}`)})
		if resp.Error == nil || resp.Error.Desc != "Parameter 'x' is unexpected" {
			t.Errorf("%s with an argument: %v", cmd, resp.Error)
		}
	}
}

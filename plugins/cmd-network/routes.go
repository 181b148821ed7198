package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// netRoute is GuestNetworkRoute of qga/qapi-schema.json (QEMU 9.1+). IPv4
// routes carry gateway, mask, irtt, window and mtu; IPv6 routes carry
// desprefixlen, source, srcprefixlen and nexthop; both carry flags, refcnt
// and use, as qemu-ga fills them from /proc/net/route and
// /proc/net/ipv6_route.
type netRoute struct {
	Iface        string  `json:"iface"`
	Destination  string  `json:"destination"`
	Metric       int64   `json:"metric"`
	Gateway      *string `json:"gateway,omitempty"`
	Mask         *string `json:"mask,omitempty"`
	Irtt         *int64  `json:"irtt,omitempty"`
	Flags        *uint64 `json:"flags,omitempty"`
	Refcnt       *int64  `json:"refcnt,omitempty"`
	Use          *int64  `json:"use,omitempty"`
	Window       *int64  `json:"window,omitempty"`
	Mtu          *int64  `json:"mtu,omitempty"`
	Desprefixlen *string `json:"desprefixlen,omitempty"`
	Source       *string `json:"source,omitempty"`
	Srcprefixlen *string `json:"srcprefixlen,omitempty"`
	Nexthop      *string `json:"nexthop,omitempty"`
	Version      int     `json:"version"`
}

// Route flags of linux/route.h and linux/ipv6_route.h, as the /proc files
// show them.
const (
	rtfUp        = 0x0001
	rtfGateway   = 0x0002
	rtfHost      = 0x0004
	rtfReject    = 0x0200
	rtfDefault   = 0x00010000
	rtfRouteInfo = 0x00020000
	rtfAddrconf  = 0x00040000
	rtfAnycast   = 0x00100000
	rtfNonexthop = 0x00200000
	rtfExpires   = 0x00400000
	rtfLocal     = 0x80000000
	rtfPrefShift = 27
)

func getRoutes(_ context.Context, call *sdk.Call) (any, error) {
	var none struct{}
	if err := call.Decode(&none); err != nil {
		return nil, err
	}
	names, err := linkNames()
	if err != nil {
		return nil, sdk.Errorf("failed to list the network interfaces: %v", err)
	}
	v4, err := ipv4Routes(names)
	if err != nil {
		return nil, sdk.Errorf("failed to read the IPv4 routes: %v", err)
	}
	v6, err := ipv6Routes(names)
	if err != nil {
		return nil, sdk.Errorf("failed to read the IPv6 routes: %v", err)
	}
	return append(v4, v6...), nil
}

// linkInfo is what the route listing needs of a link.
type linkInfo struct {
	name     string
	loopback bool
}

func linkNames() (map[int]linkInfo, error) {
	var links []netlink.Link
	var err error
	for range dumpRetries {
		if links, err = netlink.LinkList(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	names := make(map[int]linkInfo, len(links))
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = linkInfo{name: a.Name, loopback: a.Flags&net.FlagLoopback != 0}
	}
	return names, nil
}

func ptr[T any](v T) *T { return &v }

// ipv4Routes lists the main table as /proc/net/route does (net/ipv4/
// fib_trie.c, fib_route_seq_show): broadcast and multicast entries left out,
// the first next hop of a multipath route, flags from fib_flag_trans, MTU
// as advmss+40, IRTT as the rtt metric / 8; RefCnt and Use are always 0.
func ipv4Routes(names map[int]linkInfo) ([]*netRoute, error) {
	var routes []netlink.Route
	var err error
	for range dumpRetries {
		routes, err = netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	out := make([]*netRoute, 0, len(routes))
	for _, r := range routes {
		if r.Type == unix.RTN_BROADCAST || r.Type == unix.RTN_MULTICAST {
			continue
		}
		dev, gw, via := r.LinkIndex, r.Gw, r.Via
		if len(r.MultiPath) > 0 {
			nh := r.MultiPath[0]
			dev, gw, via = nh.LinkIndex, nh.Gw, nh.Via
		}
		iface := "*"
		if l, ok := names[dev]; ok && dev != 0 {
			iface = l.name
		}
		dst, mask := net.IPv4zero.To4(), net.IPv4Mask(0, 0, 0, 0)
		if r.Dst != nil {
			dst, mask = r.Dst.IP.To4(), r.Dst.Mask
		}
		var flags uint64 = rtfUp
		if r.Type == unix.RTN_UNREACHABLE || r.Type == unix.RTN_PROHIBIT {
			flags |= rtfReject
		}
		gateway := net.IPv4zero.To4()
		if gw4 := gw.To4(); gw4 != nil {
			gateway = gw4
			flags |= rtfGateway
		} else if v, ok := via.(*netlink.Via); ok && v != nil && len(v.Addr) >= 4 {
			// An IPv4 route through an IPv6 next hop: the kernel prints
			// the first four bytes of the address union.
			gateway = net.IP(v.Addr[:4])
			flags |= rtfGateway
		}
		if ones, bits := mask.Size(); ones == 32 && bits == 32 {
			flags |= rtfHost
		}
		mtu := int64(0)
		if r.AdvMSS > 0 {
			mtu = int64(r.AdvMSS) + 40
		}
		out = append(out, &netRoute{
			Iface:       iface,
			Destination: dst.String(),
			Metric:      int64(uint32(r.Priority)),
			Gateway:     ptr(gateway.String()),
			Mask:        ptr(net.IP(mask).String()),
			Irtt:        ptr(int64(uint32(r.Rtt) >> 3)),
			Flags:       ptr(flags),
			Refcnt:      ptr(int64(0)),
			Use:         ptr(int64(0)),
			Window:      ptr(int64(uint32(r.Window))),
			Mtu:         ptr(mtu),
			Version:     4,
		})
	}
	return out, nil
}

// route6 is one IPv6 route of an RTM_GETROUTE dump.
type route6 struct {
	table          uint32
	typ, protocol  uint8
	dst, src       [16]byte
	dstLen, srcLen uint8
	metric         uint32
	expires        bool
	pref           uint8
	nexthops       []nexthop6
}

type nexthop6 struct {
	ifindex int
	gw      []byte
}

// ipv6Routes lists every table as /proc/net/ipv6_route does (net/ipv6/
// ip6_fib.c, ipv6_route_native_seq_show). The dump walks the tables and
// their trees in the same order as the /proc file; on top of it:
//   - a multipath route is one message here but one line per sibling there;
//   - a table whose root holds no route shows the kernel's null entry
//     (::/0 on lo, metric 0xffffffff, flags RTF_REJECT|RTF_NONEXTHOP) at its
//     end, which dumps leave out: it is added back, for main and local at
//     least (they always exist);
//   - the kernel's fib6_flags are not in the dump: they are rebuilt from the
//     route type, protocol, gateway, expiry and preference (exact for static,
//     kernel and local routes and RA default routes; an RA prefix route lacks
//     RTF_ADDRCONF|RTF_PREFIX_RT);
//   - RefCnt, the kernel's internal reference count, is not in the dump
//     either and is given as 1 (the table's own reference); Use is 0 as in
//     the /proc file.
func ipv6Routes(names map[int]linkInfo) ([]*netRoute, error) {
	var rs []route6
	var err error
	for range dumpRetries {
		if rs, err = dumpRoutes6(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var out []*netRoute
	emitNull := func() { out = append(out, nullEntry6()) }
	seenMain, seenLocal := false, false
	for i := 0; i < len(rs); {
		table := rs[i].table
		if table == unix.RT_TABLE_LOCAL && !seenMain {
			// main (254) comes before local (255) in the table hash.
			seenMain = true
			emitNull()
		}
		seenMain = seenMain || table == unix.RT_TABLE_MAIN
		seenLocal = seenLocal || table == unix.RT_TABLE_LOCAL
		rootUsed := false
		for ; i < len(rs) && rs[i].table == table; i++ {
			r := &rs[i]
			if r.dstLen == 0 && r.srcLen == 0 {
				rootUsed = true
			}
			for _, nh := range r.nexthops {
				l, ok := names[nh.ifindex]
				if !ok || nh.ifindex == 0 {
					// qemu-ga's sscanf does not match a line without a
					// device name.
					continue
				}
				out = append(out, route6Entry(r, nh, l))
			}
		}
		if !rootUsed {
			emitNull()
		}
	}
	if !seenMain {
		emitNull()
	}
	if !seenLocal {
		emitNull()
	}
	return out, nil
}

func route6Entry(r *route6, nh nexthop6, link linkInfo) *netRoute {
	var flags uint64 = rtfUp
	nexthop := [16]byte{}
	if len(nh.gw) == 16 {
		copy(nexthop[:], nh.gw)
		flags |= rtfGateway
	}
	switch r.typ {
	case unix.RTN_LOCAL:
		flags |= rtfLocal
	case unix.RTN_ANYCAST:
		flags |= rtfAnycast
	}
	if (r.typ == unix.RTN_LOCAL || r.typ == unix.RTN_ANYCAST) && r.protocol == unix.RTPROT_KERNEL {
		flags |= rtfNonexthop // addrconf's own address routes
	}
	if r.expires {
		flags |= rtfExpires
	}
	if r.protocol == unix.RTPROT_RA {
		flags |= rtfAddrconf
		switch {
		case r.dstLen == 0 && flags&rtfGateway != 0:
			flags |= rtfDefault
		case flags&rtfGateway != 0:
			flags |= rtfRouteInfo
		}
	}
	flags |= uint64(r.pref&3) << rtfPrefShift
	if isReject6(r, link) {
		// ip6_route_info_create replaces the flags of a reject route.
		flags = rtfReject | rtfNonexthop
		if r.expires {
			flags |= rtfExpires
		}
	}
	return &netRoute{
		Iface:        link.name,
		Destination:  ntop6(r.dst),
		Metric:       int64(r.metric),
		Flags:        ptr(flags),
		Refcnt:       ptr(int64(1)),
		Use:          ptr(int64(0)),
		Desprefixlen: ptr(strconv.Itoa(int(r.dstLen))),
		Source:       ptr(ntop6(r.src)),
		Srcprefixlen: ptr(strconv.Itoa(int(r.srcLen))),
		Nexthop:      ptr(ntop6(nexthop)),
		Version:      6,
	}
}

// isReject6 is the kernel's fib6_is_reject: a reject type, or a route
// through the loopback device to anything but ::1 (which the kernel turns
// into a reject route).
func isReject6(r *route6, link linkInfo) bool {
	switch r.typ {
	case unix.RTN_UNREACHABLE, unix.RTN_PROHIBIT, unix.RTN_BLACKHOLE, unix.RTN_THROW:
		return true
	case unix.RTN_LOCAL, unix.RTN_ANYCAST, unix.RTN_MULTICAST:
		return false
	}
	return link.loopback && r.dst != netip.IPv6Loopback().As16()
}

// nullEntry6 is the kernel's ip6_null_entry as /proc/net/ipv6_route prints
// it.
func nullEntry6() *netRoute {
	return &netRoute{
		Iface:        "lo",
		Destination:  "::",
		Metric:       0xffffffff,
		Flags:        ptr(uint64(rtfReject | rtfNonexthop)),
		Refcnt:       ptr(int64(1)),
		Use:          ptr(int64(0)),
		Desprefixlen: ptr("0"),
		Source:       ptr("::"),
		Srcprefixlen: ptr("0"),
		Nexthop:      ptr("::"),
		Version:      6,
	}
}

// dumpRoutes6 dumps the IPv6 routes of every table with RTM_GETROUTE,
// keeping the attributes netlink.Route drops (RTA_CACHEINFO, RTA_PREF).
func dumpRoutes6() ([]route6, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
	// An ifinfomsg header, as the netlink package sends: the kernel reads
	// the family and applies no strict filtering.
	req.AddData(nl.NewIfInfomsg(unix.AF_INET6))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE)
	if err != nil {
		return nil, err // ErrDumpInterrupted included: the caller retries
	}
	out := make([]route6, 0, len(msgs))
	for _, m := range msgs {
		r, ok, err := parseRoute6(m)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, r)
		}
	}
	return out, nil
}

func parseRoute6(m []byte) (route6, bool, error) {
	var r route6
	if len(m) < unix.SizeofRtMsg {
		return r, false, fmt.Errorf("short route message (%d bytes)", len(m))
	}
	msg := nl.DeserializeRtMsg(m)
	if msg.Family != unix.AF_INET6 || msg.Flags&unix.RTM_F_CLONED != 0 {
		return r, false, nil
	}
	attrs, err := nl.ParseRouteAttr(m[msg.Len():])
	if err != nil {
		return r, false, fmt.Errorf("route attributes: %w", err)
	}
	r.table = uint32(msg.Table)
	r.typ, r.protocol = msg.Type, msg.Protocol
	r.dstLen, r.srcLen = msg.Dst_len, msg.Src_len
	var oif int
	var gw []byte
	var multipath []nexthop6
	for _, a := range attrs {
		v := a.Value
		switch a.Attr.Type {
		case unix.RTA_TABLE:
			if len(v) >= 4 {
				r.table = nl.NativeEndian().Uint32(v)
			}
		case unix.RTA_DST:
			copy(r.dst[:], v)
		case unix.RTA_SRC:
			copy(r.src[:], v)
		case unix.RTA_GATEWAY:
			gw = v
		case unix.RTA_OIF:
			if len(v) >= 4 {
				oif = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_PRIORITY:
			if len(v) >= 4 {
				r.metric = nl.NativeEndian().Uint32(v)
			}
		case unix.RTA_CACHEINFO:
			// struct rta_cacheinfo: clntref, lastuse, expires, ...
			if len(v) >= 12 {
				r.expires = nl.NativeEndian().Uint32(v[8:12]) != 0
			}
		case unix.RTA_PREF:
			if len(v) >= 1 {
				r.pref = v[0]
			}
		case unix.RTA_MULTIPATH:
			multipath = parseMultipath6(v)
		}
	}
	if multipath != nil {
		r.nexthops = multipath
	} else {
		r.nexthops = []nexthop6{{ifindex: oif, gw: gw}}
	}
	return r, true, nil
}

// parseMultipath6 splits RTA_MULTIPATH into its next hops (struct
// rtnexthop, then the hop's own attributes).
func parseMultipath6(b []byte) []nexthop6 {
	var out []nexthop6
	const rtnhLen = 8 // len u16, flags u8, hops u8, ifindex s32
	for len(b) >= rtnhLen {
		l := int(nl.NativeEndian().Uint16(b[0:2]))
		if l < rtnhLen || l > len(b) {
			break
		}
		nh := nexthop6{ifindex: int(int32(nl.NativeEndian().Uint32(b[4:8])))}
		if attrs, err := nl.ParseRouteAttr(b[rtnhLen:l]); err == nil {
			for _, a := range attrs {
				if a.Attr.Type == unix.RTA_GATEWAY {
					nh.gw = a.Value
				}
			}
		}
		out = append(out, nh)
		next := rtaAlign(l)
		if next >= len(b) {
			break
		}
		b = b[next:]
	}
	return out
}

func rtaAlign(l int) int { return (l + syscall.RTA_ALIGNTO - 1) &^ (syscall.RTA_ALIGNTO - 1) }

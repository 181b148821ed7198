package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/vishvananda/netlink"
)

// GuestNetworkInterface, GuestIpAddress and GuestNetworkInterfaceStat of
// qga/qapi-schema.json.
type netInterface struct {
	Name            string         `json:"name"`
	HardwareAddress string         `json:"hardware-address,omitempty"`
	IPAddresses     []ipAddress    `json:"ip-addresses,omitempty"`
	Statistics      *interfaceStat `json:"statistics,omitempty"`
}

type ipAddress struct {
	Type    string `json:"ip-address-type"`
	Address string `json:"ip-address"`
	Prefix  int    `json:"prefix"`
}

type interfaceStat struct {
	RxBytes   uint64 `json:"rx-bytes"`
	RxPackets uint64 `json:"rx-packets"`
	RxErrs    uint64 `json:"rx-errs"`
	RxDropped uint64 `json:"rx-dropped"`
	TxBytes   uint64 `json:"tx-bytes"`
	TxPackets uint64 `json:"tx-packets"`
	TxErrs    uint64 `json:"tx-errs"`
	TxDropped uint64 `json:"tx-dropped"`
}

// dumpRetries bounds the retries of a netlink dump that the kernel flagged
// as interrupted (the table changed while it was being read).
const dumpRetries = 5

func getInterfaces(_ context.Context, call *sdk.Call) (any, error) {
	var none struct{}
	if err := call.Decode(&none); err != nil {
		return nil, err
	}
	links, addrs, err := dumpLinksAndAddrs()
	if err != nil {
		return nil, sdk.Errorf("getifaddrs failed: %v", err)
	}
	return buildInterfaces(links, addrs), nil
}

func dumpLinksAndAddrs() ([]netlink.Link, []netlink.Addr, error) {
	var err error
	for range dumpRetries {
		var links []netlink.Link
		var addrs []netlink.Addr
		links, err = netlink.LinkList()
		if err == nil {
			addrs, err = netlink.AddrList(nil, netlink.FAMILY_ALL)
		}
		if err == nil {
			return links, addrs, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, nil, err
}

// buildInterfaces replays qemu-ga's loop over getifaddrs(3). glibc lists one
// entry per link (RTM_GETLINK dump order), then one per address (RTM_GETADDR
// dump: IPv4, then IPv6), an IPv4 address named by its label ("eth0:1" for
// an alias). qemu-ga makes an interface of each new name, in that order;
// gives it the hardware address SIOCGIFHWADDR reports for the name (the
// first six bytes of the link's address, zeros for a link without one, so
// "00:00:00:00:00:00" for lo); and gives an interface with addresses its
// /proc/net/dev statistics (IFLA_STATS64 here, the same counters), which an
// alias name does not have.
func buildInterfaces(links []netlink.Link, addrs []netlink.Addr) []*netInterface {
	byIndex := make(map[int]netlink.Link, len(links))
	byName := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
		byName[l.Attrs().Name] = l
	}
	var out []*netInterface
	find := func(name string) *netInterface {
		for _, i := range out {
			if i.Name == name {
				return i
			}
		}
		i := &netInterface{Name: name}
		out = append(out, i)
		return i
	}
	hwaddr := func(i *netInterface) {
		if i.HardwareAddress != "" {
			return
		}
		base, _, _ := strings.Cut(i.Name, ":") // the kernel strips an alias
		if l := byName[base]; l != nil {
			var mac [6]byte
			copy(mac[:], l.Attrs().HardwareAddr)
			i.HardwareAddress = net.HardwareAddr(mac[:]).String()
		}
	}
	for _, l := range links {
		hwaddr(find(l.Attrs().Name))
	}
	for _, a := range addrs {
		l := byIndex[a.LinkIndex]
		if l == nil || a.IPNet == nil {
			continue
		}
		name := l.Attrs().Name
		var item ipAddress
		ones, _ := a.Mask.Size()
		if len(a.IP) == net.IPv4len && len(a.Mask) == net.IPv4len {
			if a.Label != "" {
				name = a.Label
			}
			item = ipAddress{Type: "ipv4", Address: a.IP.String(), Prefix: ones}
		} else if len(a.IP) == net.IPv6len && len(a.Mask) == net.IPv6len {
			item = ipAddress{Type: "ipv6", Address: ntop6([16]byte(a.IP)), Prefix: ones}
		} else {
			continue
		}
		i := find(name)
		hwaddr(i)
		i.IPAddresses = append(i.IPAddresses, item)
		if i.Statistics == nil {
			if sl := byName[i.Name]; sl != nil && sl.Attrs().Statistics != nil {
				i.Statistics = statsOf(sl.Attrs().Statistics)
			}
		}
	}
	return out
}

// statsOf picks the counters /proc/net/dev prints: its "drop" column for
// receive is rx_dropped + rx_missed_errors.
func statsOf(s *netlink.LinkStatistics) *interfaceStat {
	return &interfaceStat{
		RxBytes:   s.RxBytes,
		RxPackets: s.RxPackets,
		RxErrs:    s.RxErrors,
		RxDropped: s.RxDropped + s.RxMissedErrors,
		TxBytes:   s.TxBytes,
		TxPackets: s.TxPackets,
		TxErrs:    s.TxErrors,
		TxDropped: s.TxDropped,
	}
}

// ntop6 formats an IPv6 address as glibc's inet_ntop, which qemu-ga uses:
// RFC 5952 compression, "::ffff:a.b.c.d" for IPv4-mapped addresses, and
// also a dotted tail for IPv4-compatible ones ("::a.b.c.d"), which Go does
// not write.
func ntop6(a [16]byte) string {
	compat := a[12] != 0 || a[13] != 0
	for _, b := range a[:12] {
		if b != 0 {
			compat = false
			break
		}
	}
	if compat {
		return fmt.Sprintf("::%d.%d.%d.%d", a[12], a[13], a[14], a[15])
	}
	return netip.AddrFrom16(a).String()
}

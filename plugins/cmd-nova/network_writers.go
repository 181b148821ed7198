package main

import (
	"bufio"
	"crypto/sha1"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Network configuration systems resetnetwork writes for.
const (
	backendIfupdown = "ifupdown"       // Debian: /etc/network/interfaces
	backendNetplan  = "netplan"        // Ubuntu: /etc/netplan/*.yaml
	backendNM       = "networkmanager" // Fedora, RHEL 9, desktops: keyfiles
	backendNetworkd = "networkd"       // systemd-networkd: *.network
	backendIfcfg    = "ifcfg"          // RHEL/CentOS 6-8: ifcfg-* and route-*
)

// header starts every file resetnetwork writes.
const header = "# Written by guest-agent from the host's network configuration (nova resetnetwork).\n"

// configFile is one file to write, by its path in the guest.
type configFile struct {
	path string
	data []byte
	mode os.FileMode
	// leaveSymlink leaves the file alone when it is a symbolic link:
	// /etc/resolv.conf then belongs to systemd-resolved or resolvconf, fed
	// from the backend's own configuration.
	leaveSymlink bool
}

// detectBackend tells the guest's network configuration system from the
// files under root, most specific first.
func detectBackend(o *options) (string, error) {
	isDir := func(p string) bool { fi, err := os.Stat(o.under(p)); return err == nil && fi.IsDir() }
	exists := func(p string) bool { _, err := os.Stat(o.under(p)); return err == nil }
	hasIfcfg := func() bool {
		m, _ := filepath.Glob(o.under("/etc/sysconfig/network-scripts/ifcfg-*"))
		for _, f := range m {
			if filepath.Base(f) != "ifcfg-lo" && !strings.Contains(filepath.Base(f), ".") {
				return true
			}
		}
		return false
	}
	switch {
	case isDir("/etc/netplan"):
		return backendNetplan, nil
	case hasIfcfg():
		return backendIfcfg, nil
	case isDir("/etc/NetworkManager/system-connections"):
		return backendNM, nil
	case exists("/etc/network/interfaces"):
		return backendIfupdown, nil
	case isDir("/etc/systemd/network"):
		return backendNetworkd, nil
	case isDir("/etc/sysconfig/network-scripts"):
		return backendIfcfg, nil
	}
	return "", fmt.Errorf("resetnetwork: cannot tell how this guest configures its network (no /etc/netplan, "+
		"ifcfg files, NetworkManager, /etc/network/interfaces or /etc/systemd/network under %s): set the option network_backend", o.Root)
}

// renderNetwork returns the backend's files plus hostname, hosts and
// resolver files.
func renderNetwork(backend string, cfg *netConfig, o *options) ([]configFile, error) {
	var files []configFile
	switch backend {
	case backendIfupdown:
		files = append(files, configFile{path: "/etc/network/interfaces", data: renderIfupdown(cfg), mode: 0o644})
	case backendNetplan:
		files = append(files, configFile{path: "/etc/netplan/50-guest-agent.yaml", data: renderNetplan(cfg), mode: 0o600})
	case backendNM:
		for _, it := range cfg.Ifaces {
			files = append(files, configFile{
				path: "/etc/NetworkManager/system-connections/guest-agent-" + it.Name + ".nmconnection",
				data: renderKeyfile(it), mode: 0o600, // NetworkManager ignores keyfiles others can read
			})
		}
	case backendNetworkd:
		for _, it := range cfg.Ifaces {
			files = append(files, configFile{
				path: "/etc/systemd/network/10-guest-agent-" + it.Name + ".network",
				data: renderNetworkd(it), mode: 0o644,
			})
		}
	case backendIfcfg:
		ipv6 := false
		for _, it := range cfg.Ifaces {
			ifcfg, route4, route6 := renderIfcfg(it)
			dir := "/etc/sysconfig/network-scripts/"
			files = append(files, configFile{path: dir + "ifcfg-" + it.Name, data: ifcfg, mode: 0o644})
			if route4 != nil {
				files = append(files, configFile{path: dir + "route-" + it.Name, data: route4, mode: 0o644})
			}
			if route6 != nil {
				files = append(files, configFile{path: dir + "route6-" + it.Name, data: route6, mode: 0o644})
			}
			ipv6 = ipv6 || len(it.IPv6) > 0
		}
		old, err := readOptional(o.under("/etc/sysconfig/network"))
		if err != nil {
			return nil, err
		}
		kv := [][2]string{{"NETWORKING", "yes"}, {"NETWORKING_IPV6", map[bool]string{true: "yes", false: "no"}[ipv6]}}
		if cfg.Hostname != "" {
			kv = append(kv, [2]string{"HOSTNAME", cfg.Hostname})
		}
		files = append(files, configFile{path: "/etc/sysconfig/network", data: updateKeyValues(old, kv), mode: 0o644})
	default:
		return nil, fmt.Errorf("resetnetwork: unknown network backend %q", backend)
	}

	if cfg.Hostname != "" {
		files = append(files, configFile{path: "/etc/hostname", data: []byte(cfg.Hostname + "\n"), mode: 0o644})
		old, err := readOptional(o.under("/etc/hosts"))
		if err != nil {
			return nil, err
		}
		files = append(files, configFile{path: "/etc/hosts", data: renderHosts(old, cfg), mode: 0o644})
	}
	if dns := allDNS(cfg); len(dns) > 0 {
		old, err := readOptional(o.under("/etc/resolv.conf"))
		if err != nil {
			return nil, err
		}
		files = append(files, configFile{path: "/etc/resolv.conf", data: renderResolv(old, dns), mode: 0o644, leaveSymlink: true})
	}
	return files, nil
}

// writeConfigFile writes f under root unless it already holds the same
// bytes, keeping the previous version as <path>.bak.<unix time>.
func (n *nova) writeConfigFile(f configFile) error {
	target := n.opts.under(f.path)
	fi, err := os.Lstat(target)
	switch {
	case err == nil && fi.Mode()&os.ModeSymlink != 0 && f.leaveSymlink:
		n.log.Info("resetnetwork: left alone (a symlink owned by the resolver manager)", "path", f.path)
		return nil
	case err == nil && !fi.Mode().IsRegular():
		return fmt.Errorf("resetnetwork: %s is not a regular file", f.path)
	case err == nil:
		if sameBytes(target, f.data) {
			return nil
		}
		if _, err := n.backup(target); err != nil {
			return fmt.Errorf("resetnetwork: %w", err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("resetnetwork: %w", err)
	}
	if err := replaceFile(target, f.data, &fileMeta{mode: f.mode}); err != nil {
		return fmt.Errorf("resetnetwork: %w", err)
	}
	return nil
}

func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("resetnetwork: %w", err)
	}
	return b, nil
}

func labelComment(b *strings.Builder, it netIface) {
	if it.Label != "" {
		fmt.Fprintf(b, "# Label %s\n", it.Label)
	}
}

// renderIfupdown writes the whole /etc/network/interfaces, as nova-agent
// does: the host's configuration replaces the image's. Extra addresses are
// further "iface" stanzas of the same interface (ifupdown 0.7 and later).
func renderIfupdown(cfg *netConfig) []byte {
	var b strings.Builder
	b.WriteString(header)
	b.WriteString("# The loopback network interface\nauto lo\niface lo inet loopback\n")
	for _, it := range cfg.Ifaces {
		b.WriteString("\n")
		labelComment(&b, it)
		fmt.Fprintf(&b, "auto %s\n", it.Name)
		dnsDone := false
		family := func(addrs []netip.Prefix, inet string, gw netip.Addr, v4 bool) {
			for i, p := range addrs {
				fmt.Fprintf(&b, "iface %s %s static\n", it.Name, inet)
				fmt.Fprintf(&b, "    address %s\n", p.Addr())
				if v4 {
					fmt.Fprintf(&b, "    netmask %s\n", dottedMask(p.Bits()))
				} else {
					fmt.Fprintf(&b, "    netmask %d\n", p.Bits())
				}
				if i > 0 {
					continue
				}
				if gw.IsValid() {
					fmt.Fprintf(&b, "    gateway %s\n", gw)
				}
				if !dnsDone && len(it.DNS) > 0 {
					fmt.Fprintf(&b, "    dns-nameservers %s\n", joinAddrs(it.DNS, " "))
					dnsDone = true
				}
				for _, r := range it.Routes {
					if r.To.Addr().Is4() != v4 {
						continue
					}
					ip := "ip"
					if !v4 {
						ip = "ip -6"
					}
					fmt.Fprintf(&b, "    post-up %s route replace %s via %s dev %s\n", ip, r.To, r.Via, it.Name)
					fmt.Fprintf(&b, "    pre-down %s route del %s via %s dev %s || true\n", ip, r.To, r.Via, it.Name)
				}
			}
		}
		family(it.IPv4, "inet", it.Gateway4, true)
		family(it.IPv6, "inet6", it.Gateway6, false)
	}
	return []byte(b.String())
}

// renderNetplan writes one netplan file for every interface; routes to
// 0.0.0.0/0 and ::/0 rather than "default" or gateway4 so that every
// netplan version since Ubuntu 18.04 reads it without warnings.
func renderNetplan(cfg *netConfig) []byte {
	var b strings.Builder
	b.WriteString(header)
	b.WriteString("network:\n  version: 2\n  ethernets:\n")
	for _, it := range cfg.Ifaces {
		if it.Label != "" {
			fmt.Fprintf(&b, "    # Label %s\n", it.Label)
		}
		fmt.Fprintf(&b, "    %s:\n", it.Name)
		fmt.Fprintf(&b, "      match:\n        macaddress: %q\n", it.MAC)
		fmt.Fprintf(&b, "      set-name: %s\n", it.Name)
		b.WriteString("      dhcp4: false\n      dhcp6: false\n")
		if len(it.IPv6) > 0 {
			b.WriteString("      accept-ra: false\n")
		}
		b.WriteString("      addresses:\n")
		for _, p := range append(append([]netip.Prefix{}, it.IPv4...), it.IPv6...) {
			fmt.Fprintf(&b, "        - %q\n", p.String())
		}
		var routes []netRoute
		if it.Gateway4.IsValid() {
			routes = append(routes, netRoute{To: netip.MustParsePrefix("0.0.0.0/0"), Via: it.Gateway4})
		}
		if it.Gateway6.IsValid() {
			routes = append(routes, netRoute{To: netip.MustParsePrefix("::/0"), Via: it.Gateway6})
		}
		routes = append(routes, it.Routes...)
		if len(routes) > 0 {
			b.WriteString("      routes:\n")
			for _, r := range routes {
				fmt.Fprintf(&b, "        - to: %q\n          via: %q\n", r.To.String(), r.Via.String())
			}
		}
		if len(it.DNS) > 0 {
			b.WriteString("      nameservers:\n        addresses:\n")
			for _, d := range it.DNS {
				fmt.Fprintf(&b, "          - %q\n", d.String())
			}
		}
	}
	return []byte(b.String())
}

// renderKeyfile writes a NetworkManager keyfile bound to the MAC.
func renderKeyfile(it netIface) []byte {
	var b strings.Builder
	b.WriteString(header)
	labelComment(&b, it)
	fmt.Fprintf(&b, "[connection]\nid=guest-agent-%s\nuuid=%s\ntype=ethernet\ninterface-name=%s\n", it.Name, nameUUID("nm:"+it.MAC), it.Name)
	b.WriteString("autoconnect=true\nautoconnect-priority=100\n\n")
	fmt.Fprintf(&b, "[ethernet]\nmac-address=%s\n", strings.ToUpper(it.MAC))
	family := func(section string, addrs []netip.Prefix, gw netip.Addr, v4 bool) {
		fmt.Fprintf(&b, "\n[%s]\n", section)
		if len(addrs) == 0 {
			if v4 {
				b.WriteString("method=disabled\n")
			} else {
				b.WriteString("method=ignore\n")
			}
			return
		}
		b.WriteString("method=manual\n")
		for i, p := range addrs {
			fmt.Fprintf(&b, "address%d=%s\n", i+1, p)
		}
		if gw.IsValid() {
			fmt.Fprintf(&b, "gateway=%s\n", gw)
		}
		var dns []netip.Addr
		for _, d := range it.DNS {
			if d.Is4() == v4 {
				dns = append(dns, d)
			}
		}
		if len(dns) > 0 {
			fmt.Fprintf(&b, "dns=%s;\n", joinAddrs(dns, ";"))
		}
		i := 0
		for _, r := range it.Routes {
			if r.To.Addr().Is4() == v4 {
				i++
				fmt.Fprintf(&b, "route%d=%s,%s\n", i, r.To, r.Via)
			}
		}
	}
	family("ipv4", it.IPv4, it.Gateway4, true)
	family("ipv6", it.IPv6, it.Gateway6, false)
	return []byte(b.String())
}

// renderNetworkd writes a systemd-networkd .network file matched by MAC.
func renderNetworkd(it netIface) []byte {
	var b strings.Builder
	b.WriteString(header)
	labelComment(&b, it)
	fmt.Fprintf(&b, "[Match]\nMACAddress=%s\n\n[Network]\n", it.MAC)
	for _, p := range it.IPv4 {
		fmt.Fprintf(&b, "Address=%s\n", p)
	}
	for _, p := range it.IPv6 {
		fmt.Fprintf(&b, "Address=%s\n", p)
	}
	if it.Gateway4.IsValid() {
		fmt.Fprintf(&b, "Gateway=%s\n", it.Gateway4)
	}
	if it.Gateway6.IsValid() {
		fmt.Fprintf(&b, "Gateway=%s\n", it.Gateway6)
	}
	for _, d := range it.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	if len(it.IPv6) > 0 {
		b.WriteString("IPv6AcceptRA=no\n")
	}
	for _, r := range it.Routes {
		fmt.Fprintf(&b, "\n[Route]\nDestination=%s\nGateway=%s\n", r.To, r.Via)
	}
	return []byte(b.String())
}

// renderIfcfg writes ifcfg-<if> and, when there are routes, route-<if> and
// route6-<if> in the "ip route" format both initscripts and NetworkManager's
// ifcfg-rh plugin read.
func renderIfcfg(it netIface) (ifcfg, route4, route6 []byte) {
	var b strings.Builder
	b.WriteString(header)
	labelComment(&b, it)
	fmt.Fprintf(&b, "DEVICE=%s\nHWADDR=%s\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\n", it.Name, it.MAC)
	for i, p := range it.IPv4 {
		suffix := ""
		if i > 0 {
			suffix = fmt.Sprint(i)
		}
		fmt.Fprintf(&b, "IPADDR%s=%s\nPREFIX%s=%d\n", suffix, p.Addr(), suffix, p.Bits())
	}
	if it.Gateway4.IsValid() {
		fmt.Fprintf(&b, "GATEWAY=%s\nDEFROUTE=yes\n", it.Gateway4)
	} else {
		b.WriteString("DEFROUTE=no\n")
	}
	for i, d := range it.DNS {
		fmt.Fprintf(&b, "DNS%d=%s\n", i+1, d)
	}
	if len(it.IPv6) > 0 {
		b.WriteString("IPV6INIT=yes\nIPV6_AUTOCONF=no\n")
		fmt.Fprintf(&b, "IPV6ADDR=%s\n", it.IPv6[0])
		if len(it.IPv6) > 1 {
			var sec []string
			for _, p := range it.IPv6[1:] {
				sec = append(sec, p.String())
			}
			fmt.Fprintf(&b, "IPV6ADDR_SECONDARIES=\"%s\"\n", strings.Join(sec, " "))
		}
		if it.Gateway6.IsValid() {
			fmt.Fprintf(&b, "IPV6_DEFAULTGW=%s\n", it.Gateway6)
		}
	} else {
		b.WriteString("IPV6INIT=no\n")
	}
	var r4, r6 strings.Builder
	for _, r := range it.Routes {
		w := &r4
		if r.To.Addr().Is6() {
			w = &r6
		}
		if w.Len() == 0 {
			w.WriteString(header)
		}
		fmt.Fprintf(w, "%s via %s dev %s\n", r.To, r.Via, it.Name)
	}
	if r4.Len() > 0 {
		route4 = []byte(r4.String())
	}
	if r6.Len() > 0 {
		route6 = []byte(r6.String())
	}
	return []byte(b.String()), route4, route6
}

// updateKeyValues sets KEY=value lines of a shell-style variables file,
// keeping everything else; missing keys are appended.
func updateKeyValues(old []byte, kv [][2]string) []byte {
	var out strings.Builder
	done := make([]bool, len(kv))
	sc := bufio.NewScanner(strings.NewReader(string(old)))
	for sc.Scan() {
		line := sc.Text()
		k, _, ok := strings.Cut(line, "=")
		replaced := false
		if ok {
			for i, p := range kv {
				if strings.TrimSpace(k) == p[0] {
					if !done[i] {
						fmt.Fprintf(&out, "%s=%s\n", p[0], p[1])
						done[i] = true
					}
					replaced = true
					break
				}
			}
		}
		if !replaced {
			out.WriteString(line + "\n")
		}
	}
	for i, p := range kv {
		if !done[i] {
			fmt.Fprintf(&out, "%s=%s\n", p[0], p[1])
		}
	}
	return []byte(out.String())
}

// renderHosts updates /etc/hosts as nova-agent does: lines for the first
// IPv4 and IPv6 address of each interface name the new hostname (missing
// ones are appended), as does Debian's 127.0.1.1 line. Other lines stay.
func renderHosts(old []byte, cfg *netConfig) []byte {
	names := cfg.Hostname
	if short, _, ok := strings.Cut(cfg.Hostname, "."); ok {
		names = cfg.Hostname + " " + short
	}
	var ips []string
	want := map[string]bool{}
	for _, it := range cfg.Ifaces {
		for _, list := range [][]netip.Prefix{it.IPv4, it.IPv6} {
			if len(list) > 0 && !want[list[0].Addr().String()] {
				ip := list[0].Addr().String()
				want[ip] = true
				ips = append(ips, ip)
			}
		}
	}
	var out strings.Builder
	sc := bufio.NewScanner(strings.NewReader(string(old)))
	for sc.Scan() {
		line := sc.Text()
		body, comment, hasComment := strings.Cut(line, "#")
		fields := strings.Fields(body)
		if len(fields) == 0 || !(want[fields[0]] || fields[0] == "127.0.1.1") {
			out.WriteString(line + "\n")
			continue
		}
		fmt.Fprintf(&out, "%s\t%s", fields[0], names)
		if hasComment {
			out.WriteString("\t#" + comment)
		}
		out.WriteString("\n")
		delete(want, fields[0])
	}
	for _, ip := range ips {
		if want[ip] {
			fmt.Fprintf(&out, "%s\t%s\n", ip, names)
		}
	}
	return []byte(out.String())
}

func allDNS(cfg *netConfig) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, it := range cfg.Ifaces {
		for _, d := range it.DNS {
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	return out
}

// renderResolv lists the nameservers, keeping the search, domain, options
// and sortlist lines of the previous file.
func renderResolv(old []byte, dns []netip.Addr) []byte {
	var b strings.Builder
	b.WriteString(header)
	sc := bufio.NewScanner(strings.NewReader(string(old)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && (f[0] == "search" || f[0] == "domain" || f[0] == "options" || f[0] == "sortlist") {
			b.WriteString(strings.Join(f, " ") + "\n")
		}
	}
	for _, d := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	return []byte(b.String())
}

func joinAddrs(addrs []netip.Addr, sep string) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, sep)
}

// nameUUID is a name-based (version 5 layout) UUID: the same interface
// keeps the same NetworkManager connection across resets.
func nameUUID(name string) string {
	h := sha1.Sum([]byte("guest-agent:" + name))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/xenstore"
	"golang.org/x/sys/unix"
)

// Where nova's xenapi driver puts the network configuration, relative to
// the domain's home: one JSON value per interface, keyed by its MAC without
// colons, and the hostname.
const (
	xsNetworking = "vm-data/networking"
	xsHostname   = "vm-data/hostname"
)

// netConfig is the configuration resetnetwork applies.
type netConfig struct {
	Hostname string
	Ifaces   []netIface // sorted by name
}

// netIface is one interface of the guest, matched to a vm-data entry by MAC.
type netIface struct {
	Name     string // kernel name, e.g. eth0
	MAC      string // lower case, colon-separated
	Label    string // nova's label ("public", "private"), for comments
	IPv4     []netip.Prefix
	IPv6     []netip.Prefix
	Gateway4 netip.Addr
	Gateway6 netip.Addr
	DNS      []netip.Addr
	Routes   []netRoute
}

type netRoute struct {
	To  netip.Prefix
	Via netip.Addr
}

// xsIface is an entry of vm-data/networking as nova writes it.
type xsIface struct {
	Label     string    `json:"label"`
	MAC       string    `json:"mac"`
	IPs       []xsAddr  `json:"ips"`
	IP6s      []xsAddr  `json:"ip6s"`
	Gateway   string    `json:"gateway"`
	GatewayV6 string    `json:"gateway_v6"`
	Gateway6  string    `json:"gateway6"` // older hosts
	DNS       []string  `json:"dns"`
	Routes    []xsRoute `json:"routes"`
}

type xsAddr struct {
	IP      string         `json:"ip"`
	Address string         `json:"address"`
	Netmask sdk.FlexString `json:"netmask"`
	Enabled sdk.FlexString `json:"enabled"`
	Gateway string         `json:"gateway"`
}

type xsRoute struct {
	Route   string         `json:"route"`
	Netmask sdk.FlexString `json:"netmask"`
	Gateway string         `json:"gateway"`
}

func (n *nova) networkCommands() []sdk.Command {
	return []sdk.Command{{
		Name: cmdReset,
		Description: "nova: configure the network from vm-data/networking and vm-data/hostname " +
			"(ifupdown, netplan, NetworkManager, systemd-networkd or ifcfg), then apply it",
		ArgsSchema: `{"type":"object","properties":{"value":{}}}`,
		Handler:    n.resetnetwork,
	}}
}

func (n *nova) resetnetwork(ctx context.Context, call *sdk.Call) (any, error) {
	var a valueArg
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	entries, hostname, err := n.readVMData(ctx)
	if err != nil {
		return nil, err
	}
	links, err := listLinks(filepath.Join(n.opts.SysfsRoot, "class", "net"))
	if err != nil {
		return nil, err
	}
	cfg, err := buildConfig(entries, hostname, links, n.log.Warn)
	if err != nil {
		return nil, err
	}
	backend := n.opts.NetworkBackend
	if backend == "" {
		if backend, err = detectBackend(&n.opts); err != nil {
			return nil, err
		}
	}
	files, err := renderNetwork(backend, cfg, &n.opts)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if err := n.writeConfigFile(f); err != nil {
			return nil, err
		}
	}
	n.log.Info("resetnetwork: configuration written", "backend", backend, "interfaces", len(cfg.Ifaces), "hostname", cfg.Hostname)
	if cfg.Hostname != "" && *n.opts.SetKernelHostname {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return nil, fmt.Errorf("resetnetwork: sethostname: %w", err)
		}
	}
	apply := n.opts.ApplyCommand
	if apply == nil && n.opts.Root == "/" {
		apply = defaultApplyCommand(backend)
	}
	if len(apply) > 0 {
		if out, err := runCommand(ctx, apply); err != nil {
			return nil, sdk.Errorf("resetnetwork: %s failed: %v: %s", apply[0], err, strings.TrimSpace(string(out)))
		}
		n.log.Info("resetnetwork: applied", "command", apply)
	}
	return "", nil
}

// defaultApplyCommand is how each distribution's own tooling takes the
// rewritten files into use, as nova-agent restarted the network service.
// It applies only when the agent writes the real root; an explicit
// apply_command (even an empty list) replaces it.
func defaultApplyCommand(backend string) []string {
	switch backend {
	case backendNetplan:
		return []string{"netplan", "apply"}
	case backendNM:
		return []string{"systemctl", "restart", "NetworkManager"}
	case backendNetworkd:
		return []string{"networkctl", "reload"}
	case backendIfcfg:
		return []string{"systemctl", "restart", "network"}
	default: // ifupdown
		return []string{"systemctl", "restart", "networking"}
	}
}

// readVMData reads every vm-data/networking entry (by key) and the
// hostname ("" when the host set none).
func (n *nova) readVMData(ctx context.Context) (map[string][]byte, string, error) {
	var (
		c   *xenstore.Client
		err error
	)
	if n.opts.XenstorePath != "" {
		c, err = xenstore.Dial(ctx, n.opts.XenstorePath)
	} else {
		c, err = xenstore.DialDefault(ctx)
	}
	if err != nil {
		return nil, "", fmt.Errorf("resetnetwork: %w", err)
	}
	defer c.Close()
	base := ""
	if n.opts.XenstoreDomid != "" {
		home, err := c.GetDomainPath(ctx, string(n.opts.XenstoreDomid))
		if err != nil {
			return nil, "", fmt.Errorf("resetnetwork: %w", err)
		}
		base = home + "/"
	}
	hostname := ""
	if v, err := c.Read(ctx, base+xsHostname); err == nil {
		hostname = strings.TrimSpace(string(v))
	} else if !errors.Is(err, xenstore.ErrNotFound) {
		return nil, "", fmt.Errorf("resetnetwork: %w", err)
	}
	names, err := c.Directory(ctx, base+xsNetworking)
	if err != nil && !errors.Is(err, xenstore.ErrNotFound) {
		return nil, "", fmt.Errorf("resetnetwork: %w", err)
	}
	entries := make(map[string][]byte, len(names))
	for _, name := range names {
		v, err := c.Read(ctx, base+xsNetworking+"/"+name)
		if errors.Is(err, xenstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("resetnetwork: %w", err)
		}
		entries[name] = v
	}
	return entries, hostname, nil
}

// listLinks maps MAC (lower case) → interface name from class/net.
func listLinks(dir string) (map[string]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("resetnetwork: list interfaces: %w", err)
	}
	links := map[string]string{}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names) // a MAC shared by several links (bonds, VLANs) goes to the first
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(dir, name, "address"))
		if err != nil {
			continue
		}
		mac := strings.ToLower(strings.TrimSpace(string(b)))
		if mac == "" || mac == "00:00:00:00:00:00" {
			continue
		}
		if _, dup := links[mac]; !dup {
			links[mac] = name
		}
	}
	return links, nil
}

// normalizeMAC turns "DEADBEEF0001" or "de:ad:be:ef:00:01" into the latter.
func normalizeMAC(s string) (string, bool) {
	h := strings.ToLower(strings.NewReplacer(":", "", "-", "").Replace(strings.TrimSpace(s)))
	if len(h) != 12 {
		return "", false
	}
	for _, c := range h {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	parts := make([]string, 6)
	for i := range parts {
		parts[i] = h[2*i : 2*i+2]
	}
	return strings.Join(parts, ":"), true
}

// buildConfig validates the entries and matches them to links. Entries
// whose MAC no interface has are skipped with a warning, as nova-agent
// does.
func buildConfig(entries map[string][]byte, hostname string, links map[string]string, warn func(string, ...any)) (*netConfig, error) {
	if len(entries) == 0 {
		return nil, sdk.Errorf("resetnetwork: no network configuration in %s", xsNetworking)
	}
	if hostname != "" && !validHostname(hostname) {
		return nil, sdk.Errorf("resetnetwork: invalid hostname %s", quote(hostname))
	}
	cfg := &netConfig{Hostname: hostname}
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	seen := map[string]bool{}
	for _, key := range keys {
		var x xsIface
		if err := json.Unmarshal(entries[key], &x); err != nil {
			return nil, sdk.Errorf("resetnetwork: %s/%s is not valid JSON: %v", xsNetworking, key, err)
		}
		macSrc := x.MAC
		if macSrc == "" {
			macSrc = key
		}
		mac, ok := normalizeMAC(macSrc)
		if !ok {
			return nil, sdk.Errorf("resetnetwork: %s/%s: invalid MAC %s", xsNetworking, key, quote(macSrc))
		}
		name, ok := links[mac]
		if !ok {
			warn("resetnetwork: no interface has this MAC; entry skipped", "mac", mac, "label", x.Label)
			continue
		}
		if seen[name] {
			return nil, sdk.Errorf("resetnetwork: two entries for interface %s (%s)", name, mac)
		}
		seen[name] = true
		iface, err := x.toIface(name, mac)
		if err != nil {
			return nil, sdk.Errorf("resetnetwork: %s/%s: %v", xsNetworking, key, err)
		}
		cfg.Ifaces = append(cfg.Ifaces, iface)
	}
	if len(cfg.Ifaces) == 0 {
		return nil, sdk.Errorf("resetnetwork: none of the MACs in %s belongs to an interface of this guest", xsNetworking)
	}
	sort.Slice(cfg.Ifaces, func(i, j int) bool { return cfg.Ifaces[i].Name < cfg.Ifaces[j].Name })
	var gw4, gw6 int
	for _, i := range cfg.Ifaces {
		if i.Gateway4.IsValid() {
			gw4++
		}
		if i.Gateway6.IsValid() {
			gw6++
		}
	}
	if gw4 > 1 || gw6 > 1 {
		return nil, sdk.Errorf("resetnetwork: more than one default gateway per address family")
	}
	return cfg, nil
}

// enabled reads nova's "enabled" flag: "1"/"0" (or numbers); absent means
// enabled.
func enabled(f sdk.FlexString) bool {
	s := strings.TrimSpace(string(f))
	return s == "" || (s != "0" && !strings.EqualFold(s, "false"))
}

func (x *xsIface) toIface(name, mac string) (netIface, error) {
	it := netIface{Name: name, MAC: mac, Label: sanitizeComment(x.Label)}
	for _, a := range x.IPs {
		if !enabled(a.Enabled) {
			continue
		}
		ip := a.IP
		if ip == "" {
			ip = a.Address
		}
		addr, err := parseAddr(ip)
		if err != nil || !addr.Is4() {
			return it, fmt.Errorf("invalid IPv4 address %s", quote(ip))
		}
		bits, err := prefixLen(string(a.Netmask), 32)
		if err != nil {
			return it, err
		}
		it.IPv4 = append(it.IPv4, netip.PrefixFrom(addr, bits))
	}
	gw6 := x.GatewayV6
	if gw6 == "" {
		gw6 = x.Gateway6
	}
	for _, a := range x.IP6s {
		if !enabled(a.Enabled) {
			continue
		}
		ip := a.IP
		if ip == "" {
			ip = a.Address
		}
		addr, err := parseAddr(ip)
		if err != nil || !addr.Is6() || addr.Is4In6() {
			return it, fmt.Errorf("invalid IPv6 address %s", quote(ip))
		}
		bits := 64
		if a.Netmask != "" {
			if bits, err = prefixLen(string(a.Netmask), 128); err != nil {
				return it, err
			}
		}
		it.IPv6 = append(it.IPv6, netip.PrefixFrom(addr, bits))
		if gw6 == "" {
			gw6 = a.Gateway
		}
	}
	if len(it.IPv4) == 0 && len(it.IPv6) == 0 {
		return it, fmt.Errorf("no enabled addresses")
	}
	var err error
	if x.Gateway != "" && len(it.IPv4) > 0 {
		if it.Gateway4, err = parseAddr(x.Gateway); err != nil || !it.Gateway4.Is4() {
			return it, fmt.Errorf("invalid IPv4 gateway %s", quote(x.Gateway))
		}
	}
	if gw6 != "" && len(it.IPv6) > 0 {
		if it.Gateway6, err = parseAddr(gw6); err != nil || !it.Gateway6.Is6() {
			return it, fmt.Errorf("invalid IPv6 gateway %s", quote(gw6))
		}
	}
	for _, d := range x.DNS {
		addr, err := parseAddr(strings.TrimSpace(d))
		if err != nil {
			return it, fmt.Errorf("invalid DNS server %s", quote(d))
		}
		it.DNS = append(it.DNS, addr)
	}
	for _, r := range x.Routes {
		net, err := parseAddr(r.Route)
		if err != nil {
			return it, fmt.Errorf("invalid route %s", quote(r.Route))
		}
		max := 32
		if net.Is6() {
			max = 128
		}
		bits, err := prefixLen(string(r.Netmask), max)
		if err != nil {
			return it, err
		}
		via, err := parseAddr(r.Gateway)
		if err != nil || via.Is4() != net.Is4() {
			return it, fmt.Errorf("invalid route gateway %s", quote(r.Gateway))
		}
		it.Routes = append(it.Routes, netRoute{To: netip.PrefixFrom(net, bits).Masked(), Via: via})
	}
	return it, nil
}

// parseAddr parses an address of the host's configuration. A zone
// ("fe80::1%eth0") is refused: it is free text, newlines included, that
// would go into the files written as it is.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err == nil && a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("address %q has a zone", s)
	}
	return a, err
}

// prefixLen reads a netmask: dotted ("255.255.255.0") or a prefix length.
func prefixLen(mask string, max int) (int, error) {
	mask = strings.TrimSpace(mask)
	if n, err := strconv.Atoi(strings.TrimPrefix(mask, "/")); err == nil {
		if n < 0 || n > max {
			return 0, fmt.Errorf("invalid netmask %s", quote(mask))
		}
		return n, nil
	}
	addr, err := netip.ParseAddr(mask)
	if err != nil || !addr.Is4() || max != 32 {
		return 0, fmt.Errorf("invalid netmask %s", quote(mask))
	}
	b := addr.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for v&0x80000000 != 0 {
		ones++
		v <<= 1
	}
	if v != 0 {
		return 0, fmt.Errorf("netmask %s is not contiguous", quote(mask))
	}
	return ones, nil
}

// dottedMask renders a prefix length as an IPv4 netmask.
func dottedMask(bits int) string {
	v := ^uint32(0) << (32 - bits)
	if bits == 0 {
		v = 0
	}
	return fmt.Sprintf("%d.%d.%d.%d", v>>24, v>>16&0xff, v>>8&0xff, v&0xff)
}

// validHostname accepts RFC 1123 names (with dots for an FQDN).
func validHostname(h string) bool {
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// sanitizeComment keeps a host-provided label from breaking out of a
// comment line in the files written: control characters go, C1 ones (NEL)
// and the Unicode line and paragraph separators too, which YAML (netplan)
// takes for line breaks.
func sanitizeComment(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r >= 0x7f && r < 0xa0 || r == '\u2028' || r == '\u2029' {
			return -1
		}
		return r
	}, s)
}

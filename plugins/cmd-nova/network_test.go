package main

import (
	"encoding/json"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/guest-agent/guest-agent/shared/xenstore/xenstoretest"
)

var update = flag.Bool("update", false, "rewrite the golden files of resetnetwork")

const fixtureDir = "testdata/resetnetwork/input"

// markers make detectBackend pick each backend on the fixture root.
var markers = map[string][]string{
	backendIfupdown: {"/etc/network/interfaces"},
	backendNetplan:  {"/etc/netplan/"},
	backendNM:       {"/etc/NetworkManager/system-connections/"},
	backendNetworkd: {"/etc/systemd/network/"},
	backendIfcfg:    {"/etc/sysconfig/network-scripts/ifcfg-eth0"},
}

// netFixture prepares root (the guest tree, the sysfs links, the backend's
// marker) and returns the XenStore keys to write, relative to the domain.
func netFixture(t *testing.T, root, backend string) map[string]string {
	t.Helper()
	var keys map[string]string
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(fixtureDir, "xenstore.json"))), &keys); err != nil {
		t.Fatal(err)
	}
	var links map[string]string
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(fixtureDir, "links.json"))), &links); err != nil {
		t.Fatal(err)
	}
	for name, mac := range links {
		writeFile(t, filepath.Join(root, "sys/class/net", name, "address"), mac+"\n", 0o444)
	}
	for _, f := range []string{"etc/hosts", "etc/resolv.conf"} {
		writeFile(t, filepath.Join(root, f), readFile(t, filepath.Join(fixtureDir, "root", f)), 0o644)
	}
	for _, m := range markers[backend] {
		if strings.HasSuffix(m, "/") {
			if err := os.MkdirAll(filepath.Join(root, m), 0o755); err != nil {
				t.Fatal(err)
			}
		} else {
			writeFile(t, filepath.Join(root, m), "# old configuration of the image\n", 0o644)
		}
	}
	return keys
}

// treeOf reads every regular file under root except sys/.
func treeOf(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && rel == "sys" {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			out[rel] = readFile(t, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// compareGolden compares root with testdata/resetnetwork/golden/<backend>,
// or rewrites the latter with -update.
func compareGolden(t *testing.T, root, backend string) {
	t.Helper()
	golden := filepath.Join("testdata/resetnetwork/golden", backend)
	got := treeOf(t, root)
	if *update {
		_ = os.RemoveAll(golden)
		for rel, data := range got {
			writeFile(t, filepath.Join(golden, rel), data, 0o644)
		}
		return
	}
	want := treeOf(t, golden)
	var names []string
	for rel := range got {
		names = append(names, rel)
	}
	for rel := range want {
		if _, ok := got[rel]; !ok {
			names = append(names, rel)
		}
	}
	sort.Strings(names)
	for _, rel := range names {
		if got[rel] != want[rel] {
			t.Errorf("%s: %s differs from the golden file\n--- got\n%s--- want\n%s", backend, rel, got[rel], want[rel])
		}
	}
}

func TestResetnetworkGolden(t *testing.T) {
	for _, backend := range []string{backendIfupdown, backendNetplan, backendNM, backendNetworkd, backendIfcfg} {
		t.Run(backend, func(t *testing.T) {
			srv := xenstoretest.NewServer(t)
			root := t.TempDir()
			for k, v := range netFixture(t, root, backend) {
				if err := srv.Write("/local/domain/0/"+k, []byte(v)); err != nil {
					t.Fatal(err)
				}
			}
			// The backend is detected from the marker.
			tp := newTestPlugin(t, map[string]any{"root": root, "xenstore_path": srv.Path()})
			if msg := tp.ok(cmdReset, ""); msg != "" {
				t.Fatalf("message %q", msg)
			}
			compareGolden(t, root, backend)
			// Modes: NetworkManager and netplan want their files private.
			for rel, mode := range map[string]os.FileMode{
				"etc/netplan/50-guest-agent.yaml":                                     0o600,
				"etc/NetworkManager/system-connections/guest-agent-eth0.nmconnection": 0o600,
				"etc/hosts": 0o644,
			} {
				if fi, err := os.Stat(filepath.Join(root, rel)); err == nil && fi.Mode().Perm() != mode {
					t.Errorf("%s: mode %v, want %v", rel, fi.Mode().Perm(), mode)
				}
			}
			// A second reset with the same data changes nothing (no new
			// backups either).
			before := treeOf(t, root)
			tp.ok(cmdReset, "")
			if after := treeOf(t, root); len(after) != len(before) {
				t.Errorf("second reset wrote %d files more", len(after)-len(before))
			}
		})
	}
}

func TestResetnetworkApplyAndOptions(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(9))
	root := t.TempDir()
	for k, v := range netFixture(t, root, backendIfupdown) {
		// Served for domain 9 through xenstore_domid, from dom0's socket.
		if err := srv.Write("/local/domain/9/"+k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	applied := filepath.Join(root, "applied")
	// Explicit backend (the marker says ifupdown).
	tp := newTestPlugin(t, map[string]any{
		"root": root, "xenstore_path": srv.Path(), "xenstore_domid": 9,
		"network_backend": backendNetworkd, "apply_command": []string{"/usr/bin/touch", applied},
	})
	tp.ok(cmdReset, "")
	if _, err := os.Stat(applied); err != nil {
		t.Fatalf("apply_command not run: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/systemd/network/10-guest-agent-eth1.network")); err != nil {
		t.Fatalf("network_backend ignored: %v", err)
	}
	if readFile(t, filepath.Join(root, "etc/network/interfaces")) != "# old configuration of the image\n" {
		t.Fatal("ifupdown file touched with network_backend = networkd")
	}
	// A failing apply is an error naming the command.
	tp2 := newTestPlugin(t, map[string]any{
		"root": root, "xenstore_path": srv.Path(), "xenstore_domid": "9",
		"apply_command": []string{"/bin/false"},
	})
	if msg := tp2.fails(cmdReset, ""); !strings.Contains(msg, "/bin/false") {
		t.Fatalf("failing apply: %q", msg)
	}
	// A symlinked resolv.conf (systemd-resolved) is left alone.
	rc := filepath.Join(root, "etc/resolv.conf")
	_ = os.Remove(rc)
	if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", rc); err != nil {
		t.Fatal(err)
	}
	tp.ok(cmdReset, "")
	if l, err := os.Readlink(rc); err != nil || !strings.Contains(l, "stub-resolv") {
		t.Fatalf("resolv.conf symlink replaced: %q %v", l, err)
	}
}

func TestResetnetworkErrors(t *testing.T) {
	srv := xenstoretest.NewServer(t)
	root := t.TempDir()
	netFixture(t, root, "")
	tp := newTestPlugin(t, map[string]any{"root": root, "xenstore_path": srv.Path(), "network_backend": backendIfupdown})
	if msg := tp.fails(cmdReset, ""); !strings.Contains(msg, "no network configuration") {
		t.Errorf("empty vm-data: %q", msg)
	}
	bad := map[string]string{
		`{"mac":"02:00:00:00:00:01","ips":[{"ip":"10.0.0.1","netmask":"255.0.0.0"}]}`:         "none of the MACs",
		`{"mac":"52:54:00:12:34:56","ips":[{"ip":"10.0.0.1","netmask":"255.0.255.0"}]}`:       "not contiguous",
		`{"mac":"52:54:00:12:34:56","ips":[{"ip":"10.0.0.300","netmask":"255.0.0.0"}]}`:       "invalid IPv4 address",
		`{"mac":"52:54:00:12:34:56","ips":[]}`:                                                "no enabled addresses",
		`{"mac":"zz","ips":[{"ip":"10.0.0.1","netmask":"8"}]}`:                                "invalid MAC",
		`{"mac":"52:54:00:12:34:56","ips":[{"ip":"10.0.0.1","netmask":"8"}],"dns":["x"]}`:     "invalid DNS",
		`{"mac":"52:54:00:12:34:56","ips":[{"ip":"10.0.0.1","netmask":"8"}],"gateway":"::1"}`: "invalid IPv4 gateway",
		`not json`: "not valid JSON",
	}
	for value, want := range bad {
		if err := srv.Write("/local/domain/0/vm-data/networking/x", []byte(value)); err != nil {
			t.Fatal(err)
		}
		if msg := tp.fails(cmdReset, ""); !strings.Contains(msg, want) {
			t.Errorf("%s: %q, want %q", value, msg, want)
		}
	}
	if err := srv.Write("/local/domain/0/vm-data/networking/x", []byte(`{"mac":"52:54:00:12:34:56","ips":[{"ip":"10.0.0.1","netmask":"8"}]}`)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Write("/local/domain/0/vm-data/hostname", []byte("bad_host name")); err != nil {
		t.Fatal(err)
	}
	if msg := tp.fails(cmdReset, ""); !strings.Contains(msg, "invalid hostname") {
		t.Errorf("bad hostname: %q", msg)
	}
	// No backend can be told.
	srv.Rm("/local/domain/0/vm-data/hostname")
	tp2 := newTestPlugin(t, map[string]any{"root": root, "xenstore_path": srv.Path()})
	if msg := tp2.fails(cmdReset, ""); !strings.Contains(msg, "network_backend") {
		t.Errorf("undetectable backend: %q", msg)
	}
	// No xenstore.
	tp3 := newTestPlugin(t, map[string]any{"root": root, "xenstore_path": "/nonexistent", "network_backend": backendIfupdown})
	tp3.fails(cmdReset, "")
}

func TestPrefixLen(t *testing.T) {
	for mask, want := range map[string]int{"255.255.255.0": 24, "255.255.224.0": 19, "0.0.0.0": 0, "255.255.255.255": 32, "24": 24, "/16": 16} {
		if got, err := prefixLen(mask, 32); err != nil || got != want {
			t.Errorf("prefixLen(%q) = %d, %v", mask, got, err)
		}
	}
	for _, bad := range []string{"33", "-1", "255.255.0.255", "x"} {
		if _, err := prefixLen(bad, 32); err == nil {
			t.Errorf("prefixLen(%q) accepted", bad)
		}
	}
	for bits, want := range map[int]string{24: "255.255.255.0", 19: "255.255.224.0", 0: "0.0.0.0", 32: "255.255.255.255"} {
		if got := dottedMask(bits); got != want {
			t.Errorf("dottedMask(%d) = %s", bits, got)
		}
	}
}

func TestDefaultApplyCommands(t *testing.T) {
	for backend, want := range map[string]string{
		backendNetplan: "netplan apply", backendNetworkd: "networkctl reload",
		backendIfupdown: "systemctl restart networking", backendNM: "systemctl restart NetworkManager",
		backendIfcfg: "systemctl restart network",
	} {
		if got := strings.Join(defaultApplyCommand(backend), " "); got != want {
			t.Errorf("%s: %q, want %q", backend, got, want)
		}
	}
}

// A label is a comment in every file written, and stays one: YAML ends a
// comment at NEL, LS and PS as well as at "\n", so a label holding one wrote
// its own netplan configuration (an interface of the host's choosing, with
// DHCP). Found by FuzzNetworkEntry.
func TestLabelStaysInItsComment(t *testing.T) {
	for _, label := range []string{"evil\u2028    eth9: {dhcp4: true}", "a\u2029b", "a\u0085b", "a\u009bb\r\nc"} {
		entry, _ := json.Marshal(map[string]any{"label": label, "ips": []map[string]string{{"ip": "192.0.2.10", "netmask": "24"}}})
		cfg, err := buildConfig(map[string][]byte{"deadbeef0001": entry}, "", map[string]string{"de:ad:be:ef:00:01": "eth0"}, func(string, ...any) {})
		if err != nil {
			t.Fatal(err)
		}
		text := string(renderNetplan(cfg))
		for _, brk := range []string{"\r", "\u0085", "\u2028", "\u2029", "\u009b"} {
			if strings.Contains(text, brk) {
				t.Fatalf("label %q: netplan file holds %q:\n%s", label, brk, text)
			}
		}
		if strings.Count(text, "\n") != strings.Count(string(renderNetplan(&netConfig{Ifaces: []netIface{{Name: "eth0", MAC: "de:ad:be:ef:00:01", Label: "x", IPv4: cfg.Ifaces[0].IPv4}}})), "\n") {
			t.Fatalf("label %q changed the number of lines:\n%s", label, text)
		}
	}
}

// An IPv6 address may carry a zone ("fe80::1%eth0"), which netip parses as
// free text, newlines included: a DNS server, gateway or route gateway with
// one wrote lines of the host's choosing into the files (a "nameserver" in
// resolv.conf, an ifupdown "up" command run as root). Addresses with a zone
// are refused. Found by FuzzNetworkEntry.
func TestAddressZonesRefused(t *testing.T) {
	links := map[string]string{"de:ad:be:ef:00:01": "eth0"}
	for _, entry := range []string{
		`{"ips":[{"ip":"192.0.2.10","netmask":"24"}],"dns":["fe80::53%x\nnameserver 203.0.113.66"]}`,
		`{"ip6s":[{"ip":"2001:db8::10"}],"gateway_v6":"fe80::1%eth0\nup touch /tmp/pwned"}`,
		`{"ip6s":[{"ip":"2001:db8::10"}],"routes":[{"route":"2001:db8:1::","netmask":"48","gateway":"fe80::1%x"}]}`,
		`{"ip6s":[{"ip":"fe80::10%eth0"}]}`,
	} {
		cfg, err := buildConfig(map[string][]byte{"deadbeef0001": []byte(entry)}, "", links, func(string, ...any) {})
		if err == nil {
			t.Fatalf("%s accepted: %+v", entry, cfg.Ifaces)
		}
	}
}

package xen

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/guest-agent/guest-agent/shared/xenstore/oxenstored"
)

// The fixture and golden files are cmd-nova's own (its unit tests check the
// same files in process).
const netTestdata = "../../plugins/cmd-nova/testdata/resetnetwork"

// markers make the agent detect each backend on the fixture root.
var markers = map[string][]string{
	"ifupdown":       {"/etc/network/interfaces"},
	"netplan":        {"/etc/netplan/"},
	"networkmanager": {"/etc/NetworkManager/system-connections/"},
	"networkd":       {"/etc/systemd/network/"},
	"ifcfg":          {"/etc/sysconfig/network-scripts/ifcfg-eth0"},
}

func loadJSON(t *testing.T, path string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(readFile(t, path)), v); err != nil {
		t.Fatal(err)
	}
}

// guestRoot builds the guest's tree for a backend: sysfs links with the
// fixture's MACs, /etc/hosts, /etc/resolv.conf and the backend's marker.
func guestRoot(t *testing.T, backend string) string {
	t.Helper()
	root := t.TempDir()
	var links map[string]string
	loadJSON(t, filepath.Join(netTestdata, "input/links.json"), &links)
	for name, mac := range links {
		writeFile(t, filepath.Join(root, "sys/class/net", name, "address"), mac+"\n", 0o444)
	}
	for _, f := range []string{"etc/hosts", "etc/resolv.conf"} {
		writeFile(t, filepath.Join(root, f), readFile(t, filepath.Join(netTestdata, "input/root", f)), 0o644)
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
	return root
}

var bakTime = regexp.MustCompile(`\.bak\.[0-9]+$`)

// tree reads every file under root except sys/, with backup times
// normalised (the agent uses the real clock, the golden files a fixed one).
func tree(t *testing.T, root string) map[string]string {
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
			out[bakTime.ReplaceAllString(rel, ".bak.TIME")] = readFile(t, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestResetnetworkPerDistro(t *testing.T) {
	d := oxenstored.Start(t)
	h := newHost(t, d)
	// What nova's xenapi driver writes before sending resetnetwork.
	var keys map[string]string
	loadJSON(t, filepath.Join(netTestdata, "input/xenstore.json"), &keys)
	var pairs []string
	for k, v := range keys {
		pairs = append(pairs, domHome+"/"+k, v)
	}
	if err := d.XenstoreWrite(h.ctx, pairs...); err != nil {
		t.Fatal(err)
	}

	backends := make([]string, 0, len(markers))
	for b := range markers {
		backends = append(backends, b)
	}
	sort.Strings(backends)
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			h.t = t
			root := guestRoot(t, backend)
			applied := filepath.Join(root, "applied")
			agent := startAgent(t, d, map[string]any{
				"root": root, "xenstore_path": d.Path(),
				"apply_command": []string{"/usr/bin/touch", applied},
			})
			if r := h.call("resetnetwork", ""); r != (reply{"0", ""}) {
				t.Fatalf("resetnetwork: %+v", r)
			}
			if _, err := os.Stat(applied); err != nil {
				t.Fatalf("apply_command not run: %v", err)
			}
			_ = os.Remove(applied)
			got := tree(t, root)
			want := tree(t, filepath.Join(netTestdata, "golden", backend))
			names := map[string]bool{}
			for k := range got {
				names[k] = true
			}
			for k := range want {
				names[k] = true
			}
			for name := range names {
				if got[name] != want[name] {
					t.Errorf("%s differs from the golden file\n--- got\n%s--- want\n%s", name, got[name], want[name])
				}
			}
			agent.Stop(t)
		})
	}
}

func TestAgentupdate(t *testing.T) {
	d := oxenstored.Start(t)
	h := newHost(t, d)
	newBinary := []byte("#!/bin/sh\necho new agent\n")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(newBinary)
	}))
	defer srv.Close()
	root := t.TempDir()
	bin := filepath.Join(root, "usr/sbin/nova-agent")
	writeFile(t, bin, "old agent\n", 0o755)
	startAgent(t, d, map[string]any{"root": root, "agent_binary": "/usr/sbin/nova-agent"})

	sumMD5 := md5.Sum(newBinary)
	// A wrong checksum replaces nothing.
	if r := h.call("agentupdate", srv.URL+"/agent,"+hex.EncodeToString(make([]byte, 16))); r.ReturnCode != "500" || !strings.Contains(r.Message, "mismatch") {
		t.Fatalf("bad checksum: %+v", r)
	}
	if readFile(t, bin) != "old agent\n" {
		t.Fatal("binary replaced despite a checksum mismatch")
	}
	// nova's dom0 plugin form: {"url", "md5sum"}.
	if r := h.call("agentupdate", map[string]string{"url": srv.URL + "/agent", "md5sum": hex.EncodeToString(sumMD5[:])}); r != (reply{"0", ""}) {
		t.Fatalf("agentupdate: %+v", r)
	}
	if readFile(t, bin) != string(newBinary) || readFile(t, bin+".old") != "old agent\n" {
		t.Fatal("binary not replaced, or the old one not kept")
	}
	// "URL,sha256:HEX".
	newBinary = []byte("#!/bin/sh\necho newer agent\n")
	sum := sha256.Sum256(newBinary)
	if r := h.call("agentupdate", srv.URL+"/agent,sha256:"+hex.EncodeToString(sum[:])); r != (reply{"0", ""}) {
		t.Fatalf("agentupdate sha256: %+v", r)
	}
	if readFile(t, bin) != string(newBinary) {
		t.Fatal("binary not replaced")
	}
	if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode after update: %v %v", fi.Mode(), err)
	}
}

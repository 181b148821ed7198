package main

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func md5hex(b []byte) string    { s := md5.Sum(b); return hex.EncodeToString(s[:]) }
func sha256hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func updateFixture(t *testing.T, extra map[string]any) (*testPlugin, string, []byte, string) {
	t.Helper()
	opts := map[string]any{"agent_binary": "/usr/sbin/guest-agent"}
	for k, v := range extra {
		opts[k] = v
	}
	tp := newTestPlugin(t, opts)
	bin := filepath.Join(tp.root, "usr/sbin/guest-agent")
	writeFile(t, bin, "#!old binary\n", 0o750)
	newBin := []byte("\x7fELF new binary " + strings.Repeat("x", 10000))
	src := filepath.Join(t.TempDir(), "guest-agent.new")
	if err := os.WriteFile(src, newBin, 0o644); err != nil {
		t.Fatal(err)
	}
	return tp, bin, newBin, src
}

func leftovers(t *testing.T, dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, ".*update*"))
	return m
}

func TestAgentupdateFileURLMD5(t *testing.T) {
	tp, bin, newBin, src := updateFixture(t, nil)
	tp.ok(cmdAgentupdate, "file://"+src+","+md5hex(newBin))
	if readFile(t, bin) != string(newBin) {
		t.Fatal("binary not replaced")
	}
	if readFile(t, bin+".old") != "#!old binary\n" {
		t.Fatal("previous binary not kept")
	}
	if fi, _ := os.Stat(bin); fi.Mode().Perm() != 0o750 {
		t.Fatalf("mode %v", fi.Mode())
	}
}

func TestAgentupdateHTTPSHA256AndObjectForm(t *testing.T) {
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/agent" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	tp, bin, newBin, _ := updateFixture(t, map[string]any{"agent_restart_command": []string{"/bin/sh", "-c", "true"}})
	body = newBin
	tp.ok(cmdAgentupdate, srv.URL+"/agent,sha256:"+sha256hex(newBin))
	if readFile(t, bin) != string(newBin) {
		t.Fatal("binary not replaced")
	}
	body = []byte("third")
	tp.ok(cmdAgentupdate, json.RawMessage(`{"url":"`+srv.URL+`/agent","md5sum":"`+strings.ToUpper(md5hex(body))+`"}`))
	if readFile(t, bin) != "third" {
		t.Fatal("object form")
	}
	if msg := tp.fails(cmdAgentupdate, srv.URL+"/missing,"+md5hex(body)); !strings.Contains(msg, "404") {
		t.Fatalf("404: %q", msg)
	}
}

func TestAgentupdateRefusals(t *testing.T) {
	tp, bin, newBin, src := updateFixture(t, nil)
	for value, want := range map[string]string{
		"file://" + src:       "no checksum",
		"file://" + src + ",": "no checksum",
		"file://" + src + "," + md5hex([]byte("other")):    "mismatch",
		"file://" + src + ",sha256:" + md5hex(newBin):      "not a sha256",
		"file://" + src + ",xyz":                           "not a md5",
		"ftp://host/x," + md5hex(newBin):                   "not an http",
		"file:///nonexistent/agent," + md5hex(newBin):      "no such file",
		"file://" + src + ",sha256:" + sha256hex([]byte{}): "mismatch",
	} {
		msg := tp.fails(cmdAgentupdate, value)
		if !strings.Contains(msg, want) {
			t.Errorf("%s: %q, want %q", value, msg, want)
		}
	}
	// Over the size limit even with the right checksum.
	small := newTestPlugin(t, map[string]any{"root": tp.root, "agent_binary": "/usr/sbin/guest-agent", "max_download_bytes": 100})
	if msg := small.fails(cmdAgentupdate, "file://"+src+","+md5hex(newBin)); !strings.Contains(msg, "larger than") {
		t.Errorf("size limit: %q", msg)
	}
	if readFile(t, bin) != "#!old binary\n" {
		t.Fatal("binary replaced by a refused update")
	}
	if l := leftovers(t, filepath.Dir(bin)); len(l) != 0 {
		t.Fatalf("temporary files left: %v", l)
	}
	if _, err := os.Stat(bin + ".old"); err == nil {
		t.Fatal(".old written by a refused update")
	}
	// Not configured.
	tp2 := newTestPlugin(t, nil)
	if msg := tp2.fails(cmdAgentupdate, "file://"+src+","+md5hex(newBin)); !strings.Contains(msg, "agent_binary") {
		t.Errorf("unconfigured: %q", msg)
	}
}

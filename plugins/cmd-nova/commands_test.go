package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

func TestVersionFeaturesKMS(t *testing.T) {
	tp := newTestPlugin(t, nil)
	if v := tp.ok(cmdVersion, "agent"); v != version {
		t.Errorf("version %q, want %q", v, version)
	}
	tp2 := newTestPlugin(t, map[string]any{"version": "1.39.0"})
	if v := tp2.ok(cmdVersion, ""); v != "1.39.0" {
		t.Errorf("configured version %q", v)
	}
	f := tp.ok(cmdFeatures, "")
	var names []string
	for _, c := range tp.p.Info().Commands {
		names = append(names, c.Name)
	}
	if f != strings.Join(names, ",") {
		t.Errorf("features %q, commands %v", f, names)
	}
	for _, want := range []string{"version", "features", "keyinit", "password", "injectfile", "file_inject", "resetnetwork", "agentupdate", "kmsactivate"} {
		if !strings.Contains(","+f+",", ","+want+",") {
			t.Errorf("features %q lack %s", f, want)
		}
	}
	if msg := tp.fails(cmdKMS, ""); !strings.Contains(msg, "not supported") {
		t.Errorf("kmsactivate: %q", msg)
	}
	// Unknown commands are the SDK's CommandNotFound (the dialect's 404).
	_, perr := tp.run("nosuch", "")
	if perr == nil || perr.Class != sdk.ClassCommandNotFound {
		t.Errorf("unknown command: %v", perr)
	}
	// Arguments other than value are refused.
	resp := tp.p.Run(t.Context(), &pb.RunRequest{Command: cmdVersion, ArgsJson: []byte(`{"value":"","x":1}`)})
	if resp.Error == nil {
		t.Error("unexpected argument accepted")
	}
}

func TestOptions(t *testing.T) {
	for _, bad := range []string{`{"rooot":"/"}`, `{"root":"relative"}`, `{"network_backend":"wicked"}`, `{"download_timeout":"soon"}`, `{"apply_command":"netplan apply"}`} {
		if _, err := parseOptions([]byte(bad)); err == nil {
			t.Errorf("options %s accepted", bad)
		}
	}
	o, err := parseOptions([]byte(`{"root":"/tmp/x/","xenstore_domid":5}`))
	if err != nil {
		t.Fatal(err)
	}
	if o.Root != "/tmp/x" || o.SysfsRoot != "/tmp/x/sys" || *o.SetKernelHostname || o.User != "root" || o.XenstoreDomid != "5" {
		t.Errorf("defaults %+v", o)
	}
	if o.under("/../../etc/passwd") != "/tmp/x/etc/passwd" {
		t.Errorf("under escapes root: %s", o.under("/../../etc/passwd"))
	}
	d, _ := parseOptions(nil)
	if d.Root != "/" || !*d.SetKernelHostname || d.SysfsRoot != "/sys" {
		t.Errorf("defaults %+v", d)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestInjectfile(t *testing.T) {
	tp := newTestPlugin(t, nil)
	// A new file, in a new directory.
	if msg := tp.ok(cmdInjectfile, b64("/root/.ssh/authorized_keys,ssh-rsa AAAA key\n")); msg != "" {
		t.Fatalf("message %q", msg)
	}
	p := filepath.Join(tp.root, "root/.ssh/authorized_keys")
	if readFile(t, p) != "ssh-rsa AAAA key\n" {
		t.Fatal("contents")
	}
	// Contents may contain commas; an existing file is kept with its mode
	// and owner.
	target := filepath.Join(tp.root, "etc/motd")
	writeFile(t, target, "old\n", 0o600)
	if err := os.Chown(target, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	tp.ok(cmdInjectfile, b64("/etc/motd,a,b,c\n"))
	if readFile(t, target) != "a,b,c\n" {
		t.Fatalf("contents %q", readFile(t, target))
	}
	fi, _ := os.Stat(target)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o600 || st.Uid != 1234 || st.Gid != 5678 {
		t.Fatalf("mode %v owner %d:%d", fi.Mode(), st.Uid, st.Gid)
	}
	bak := target + ".bak.1795348800"
	if readFile(t, bak) != "old\n" {
		t.Fatalf("backup %s", bak)
	}
	// Same second again: the backup name gets a suffix.
	tp.ok(cmdInjectfile, b64("/etc/motd,third\n"))
	if readFile(t, bak+".1") != "a,b,c\n" || readFile(t, bak) != "old\n" {
		t.Fatal("second backup")
	}
	// Without padding, with newlines (Python's encodebytes).
	tp.ok(cmdInjectfile, strings.TrimRight(b64("/etc/x,12345"), "=")+"\n")
	if readFile(t, filepath.Join(tp.root, "etc/x")) != "12345" {
		t.Fatal("unpadded base64")
	}
	// ".." cannot leave root.
	tp.ok(cmdInjectfile, b64("/../../escape,x"))
	if _, err := os.Stat(filepath.Join(tp.root, "escape")); err != nil {
		t.Fatalf("/../../escape not written under root: %v", err)
	}
	// The newer file_inject form.
	tp.ok(cmdFileInject, json.RawMessage(`{"b64_path":"`+b64("/etc/new")+`","b64_file":"`+b64("n\n")+`"}`))
	if readFile(t, filepath.Join(tp.root, "etc/new")) != "n\n" {
		t.Fatal("file_inject")
	}

	for _, bad := range []any{"!!!", b64("no comma"), b64("relative/path,x"), json.RawMessage(`{"a":1}`)} {
		tp.fails(cmdInjectfile, bad)
	}
	tp.fails(cmdFileInject, json.RawMessage(`{"b64_path":"`+b64("/etc/y")+`"}`))
	tp.fails(cmdFileInject, "string")
	if err := os.Mkdir(filepath.Join(tp.root, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if msg := tp.fails(cmdInjectfile, b64("/adir,x")); !strings.Contains(msg, "not a regular file") {
		t.Fatalf("directory target: %q", msg)
	}
	if m, _ := filepath.Glob(filepath.Join(tp.root, "etc", ".*guest-agent*")); len(m) != 0 {
		t.Fatalf("temporary files left: %v", m)
	}
}

package domains

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseDomainXML(t *testing.T) {
	d, err := ParseDomainXML(readFixture(t, "run/web1.xml"))
	if err != nil {
		t.Fatal(err)
	}
	want := Domain{Name: "web1", Running: true, Channels: []Channel{
		{Target: "org.qemu.guest_agent.0", Socket: "/var/lib/libvirt/qemu/channel/target/domain-3-web1/org.qemu.guest_agent.0", State: "connected"},
		{Target: "negotiator-guest-to-host.0", Socket: "/var/lib/libvirt/qemu/channel/target/domain-3-web1/negotiator-guest-to-host.0", State: "disconnected"},
	}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("status file:\n got %+v\nwant %+v", d, want)
	}

	d, err = ParseDomainXML(readFixture(t, "dumpxml-running.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if !d.Running || d.Name != "mail" || len(d.Channels) != 1 || d.Channels[0].Socket != "/run/libvirt/qemu/channel/7-mail/org.qemu.guest_agent.0" {
		t.Fatalf("dumpxml of a running domain: %+v", d)
	}

	d, err = ParseDomainXML(readFixture(t, "dumpxml-inactive.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Running {
		t.Fatalf("a domain without an id is not running: %+v", d)
	}
	if _, err := findIn(d, AgentChannel); !errors.Is(err, ErrNotFound) {
		t.Fatalf("inactive domain: %v, want ErrNotFound", err)
	}

	for _, bad := range []string{"", "<domain>", "<network><name>x</name></network>", "<domain id='1'></domain>", "web1 running"} {
		if _, err := ParseDomainXML([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestRuntimeDir(t *testing.T) {
	ctx := context.Background()
	rd := RuntimeDir{Dir: filepath.Join("testdata", "run")}
	guests, err := rd.Guests(ctx, AgentChannel)
	if err != nil {
		t.Fatal(err)
	}
	want := []Guest{
		{Name: "db2"}, // paused, its agent channel a pty: no socket
		{Name: "web1", Socket: "/var/lib/libvirt/qemu/channel/target/domain-3-web1/org.qemu.guest_agent.0", State: "connected"},
	}
	if !reflect.DeepEqual(guests, want) {
		t.Fatalf("guests:\n got %+v\nwant %+v", guests, want)
	}

	g, err := rd.Find(ctx, "web1", "negotiator-guest-to-host.0")
	if err != nil || g.Socket != "/var/lib/libvirt/qemu/channel/target/domain-3-web1/negotiator-guest-to-host.0" {
		t.Fatalf("negotiator channel of web1: %+v %v", g, err)
	}
	if _, err := rd.Find(ctx, "db2", AgentChannel); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("pty channel: %v, want ErrNoChannel", err)
	}
	for _, name := range []string{"nosuch", "../run/web1", "", "web1.pid"} {
		if _, err := rd.Find(ctx, name, AgentChannel); !errors.Is(err, ErrNotFound) {
			t.Errorf("Find(%q): %v, want ErrNotFound", name, err)
		}
	}
	_, err = FindSocket(ctx, rd, "nosuch", AgentChannel)
	if err == nil || !strings.Contains(err.Error(), `"nosuch"`) || !strings.Contains(err.Error(), AgentChannel) {
		t.Fatalf("FindSocket error names neither guest nor channel: %v", err)
	}

	// A broken status file is an error, not a guest that silently vanished.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "half.xml"), []byte("<domstatus state='running'><domain id='1'><name>half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (RuntimeDir{Dir: dir}).Guests(ctx, AgentChannel); err == nil || !strings.Contains(err.Error(), "half.xml") {
		t.Fatalf("truncated status file: %v", err)
	}
	if _, err := (RuntimeDir{Dir: filepath.Join(dir, "none")}).Guests(ctx, AgentChannel); err == nil {
		t.Fatal("a missing runtime directory listed no error")
	}
}

func listen(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
}

func TestSocketDir(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	listen(t, filepath.Join(dir, "alpha.sock"))
	listen(t, filepath.Join(dir, "beta"))
	if err := os.Mkdir(filepath.Join(dir, "gamma"), 0o755); err != nil {
		t.Fatal(err)
	}
	listen(t, filepath.Join(dir, "gamma", "negotiator-guest-to-host.0"))
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s := SocketDir{Dir: dir}
	guests, err := s.Guests(ctx, "negotiator-guest-to-host.0")
	if err != nil {
		t.Fatal(err)
	}
	want := []Guest{
		{Name: "alpha", Socket: filepath.Join(dir, "alpha.sock")},
		{Name: "beta", Socket: filepath.Join(dir, "beta")},
		{Name: "gamma", Socket: filepath.Join(dir, "gamma", "negotiator-guest-to-host.0")},
	}
	if !reflect.DeepEqual(guests, want) {
		t.Fatalf("guests:\n got %+v\nwant %+v", guests, want)
	}
	if guests, _ := s.Guests(ctx, AgentChannel); guests[2].Socket != "" {
		t.Fatalf("gamma has no agent socket: %+v", guests[2])
	}
	if g, err := s.Find(ctx, "alpha", AgentChannel); err != nil || g.Socket != filepath.Join(dir, "alpha.sock") {
		t.Fatalf("alpha: %+v %v", g, err)
	}
	if _, err := s.Find(ctx, "gamma", AgentChannel); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("gamma agent: %v", err)
	}
	for _, name := range []string{"notes.txt", "nosuch", "..", "gamma/negotiator-guest-to-host.0"} {
		if _, err := s.Find(ctx, name, AgentChannel); !errors.Is(err, ErrNotFound) {
			t.Errorf("Find(%q): %v, want ErrNotFound", name, err)
		}
	}
}

// TestVirsh runs the real virsh against libvirt's test driver, which
// serves the domains of an XML file as running ones without a daemon.
func TestVirsh(t *testing.T) {
	if _, err := exec.LookPath("virsh"); err != nil {
		t.Skip("virsh not installed (libvirt-clients): make test installs it")
	}
	ctx := context.Background()
	node, err := filepath.Abs(filepath.Join("testdata", "node.xml"))
	if err != nil {
		t.Fatal(err)
	}
	v := Virsh{Connect: "test://" + node}
	guests, err := v.Guests(ctx, AgentChannel)
	if err != nil {
		t.Fatal(err)
	}
	want := []Guest{{Name: "db 2"}, {Name: "web1", Socket: "/run/test/web1/org.qemu.guest_agent.0"}}
	if !reflect.DeepEqual(guests, want) {
		t.Fatalf("guests:\n got %+v\nwant %+v", guests, want)
	}
	if s, err := FindSocket(ctx, v, "web1", "negotiator-guest-to-host.0"); err != nil || s != "/run/test/web1/negotiator-guest-to-host.0" {
		t.Fatalf("web1 negotiator: %q %v", s, err)
	}
	if _, err := v.Find(ctx, "db 2", AgentChannel); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("db 2: %v, want ErrNoChannel", err)
	}
	if _, err := v.Find(ctx, "nosuch", AgentChannel); !errors.Is(err, ErrNotFound) {
		t.Fatalf("nosuch: %v, want ErrNotFound", err)
	}
	// A URI libvirt cannot open is an error that says so, not an empty host.
	if _, err := (Virsh{Connect: "test:///nonexistent/node.xml"}).Guests(ctx, AgentChannel); err == nil || !strings.Contains(err.Error(), "virsh") {
		t.Fatalf("bad URI: %v", err)
	}
}

func TestNew(t *testing.T) {
	t.Setenv("LIBVIRT_DEFAULT_URI", "")
	if _, ok := New(Options{SocketDir: "/x", Connect: "qemu:///system"}).(SocketDir); !ok {
		t.Error("a socket directory wins")
	}
	if v, ok := New(Options{Connect: "qemu+ssh://h/system"}).(Virsh); !ok || v.Connect != "qemu+ssh://h/system" {
		t.Error("--connect goes through virsh")
	}
	if _, ok := New(Options{RuntimeDir: "testdata/run"}).(RuntimeDir); !ok {
		t.Error("a readable runtime directory is read")
	}
	if _, ok := New(Options{RuntimeDir: "testdata/none"}).(Virsh); !ok {
		t.Error("without a runtime directory virsh's default connection is asked")
	}
	t.Setenv("LIBVIRT_DEFAULT_URI", "qemu:///session")
	if _, ok := New(Options{RuntimeDir: "testdata/run"}).(Virsh); !ok {
		t.Error("LIBVIRT_DEFAULT_URI goes through virsh")
	}
}

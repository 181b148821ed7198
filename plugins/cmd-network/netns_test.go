package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netns"
)

// Test topology: two namespaces joined by a veth pair, addresses from the
// documentation ranges (198.51.100.0/24, 2001:db8::/32). Every packet the
// tests send stays inside these namespaces.

var nsCounter atomic.Int64

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2's ip is not installed")
	}
}

// newNetns creates a named network namespace, removed at the end of the
// test.
func newNetns(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("ga-nettest-%d-%d", os.Getpid(), nsCounter.Add(1))
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	sh(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNetns runs fn on an OS thread switched into namespace name: sockets,
// netlink requests and /proc/thread-self/net all see that namespace.
func inNetns(t *testing.T, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		// A thread that cannot go back stays locked and dies with the
		// goroutine, so no other code runs in the test namespace.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	fn()
}

// call runs a command of the plugin in namespace ns, through
// CommandPlugin.Run as the data plane does, and decodes its result.
func call(t *testing.T, ns, cmd string, out any) {
	t.Helper()
	p := newPlugin()
	p.Logger = hclog.NewNullLogger()
	var resp *pb.RunResponse
	inNetns(t, ns, func() {
		resp = p.Run(context.Background(), &pb.RunRequest{Command: cmd, ArgsJson: []byte("{}")})
	})
	if resp.Error != nil {
		t.Fatalf("%s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
	}
	if err := json.Unmarshal(resp.ResultJson, out); err != nil {
		t.Fatalf("%s returned %s: %v", cmd, resp.ResultJson, err)
	}
}

// topology is ns1 ⟷ ns2 over veth ga0 ⟷ ga1, plus a link left down.
type topology struct {
	ns1, ns2 string
}

func newTopology(t *testing.T) topology {
	t.Helper()
	needRoot(t)
	tp := topology{ns1: newNetns(t), ns2: newNetns(t)}
	sh(t, "ip", "link", "add", "ga0", "netns", tp.ns1, "address", "02:00:00:00:aa:01", "type", "veth",
		"peer", "name", "ga1", "netns", tp.ns2, "address", "02:00:00:00:aa:02")
	// (veth rather than dummy: not every kernel here has the dummy module)
	sh(t, "ip", "link", "add", "gadown", "netns", tp.ns1, "address", "02:00:00:00:aa:03", "type", "veth",
		"peer", "name", "gapeer", "netns", tp.ns2)
	for _, l := range []struct{ ns, dev string }{{tp.ns1, "ga0"}, {tp.ns2, "ga1"}} {
		// No link-local address: its timing depends on the carrier.
		sh(t, "ip", "-n", l.ns, "link", "set", l.dev, "addrgenmode", "none")
		sh(t, "ip", "-n", l.ns, "link", "set", l.dev, "up")
	}
	sh(t, "ip", "-n", tp.ns1, "addr", "add", "198.51.100.1/24", "dev", "ga0")
	sh(t, "ip", "-n", tp.ns1, "addr", "add", "198.51.100.9/24", "dev", "ga0", "label", "ga0:1")
	sh(t, "ip", "-n", tp.ns1, "addr", "add", "2001:db8:1::1/64", "dev", "ga0", "nodad")
	sh(t, "ip", "-n", tp.ns2, "addr", "add", "198.51.100.2/24", "dev", "ga1")
	sh(t, "ip", "-n", tp.ns2, "addr", "add", "2001:db8:1::2/64", "dev", "ga1", "nodad")
	return tp
}

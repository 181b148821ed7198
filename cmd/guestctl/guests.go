package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/domains"
	"github.com/spf13/cobra"
)

// guestFlags are the flags that name guests by libvirt domain instead of
// by socket; every subcommand that talks to a guest channel shares them
// (the agent's channel here, negotiator's in guestctl negotiator).
type guestFlags struct {
	domain    string // --domain/-d NAME
	connect   string // --connect/-c URI, passed to virsh
	socketDir string // --socket-dir DIR: a directory of sockets as guests
	runDir    string // --libvirt-runtime-dir DIR: libvirt's status files
	// direct (--direct): connect to the agent channel's socket found in a
	// libvirt domain's XML. Otherwise the agent of a libvirt domain is
	// reached through libvirt (virsh qemu-agent-command) by a local
	// bridge: libvirtd itself holds that socket's one connection, and for
	// a remote URI the socket is on another host.
	direct  bool
	bridges *bridgeSet // the bridges this run started, closed at its end
}

type bridgeSet struct {
	mu   sync.Mutex
	list []*domains.Bridge
}

func (g *guestFlags) register(root *cobra.Command) {
	g.bridges = &bridgeSet{}
	f := root.PersistentFlags()
	f.StringVarP(&g.domain, "domain", "d", "", "libvirt domain whose channel socket to use (from its XML)")
	f.StringVarP(&g.connect, "connect", "c", "", "libvirt URI for --domain, passed to virsh (default: libvirt's runtime files, else virsh's default)")
	f.StringVar(&g.runDir, "libvirt-runtime-dir", domains.DefaultRuntimeDir, "libvirt's status files of running domains, read when no --connect is given")
	f.BoolVar(&g.direct, "direct", false, "with --domain, connect to the agent channel's socket from the domain XML instead of going through libvirt (only when libvirtd is not connected to it)")
	f.StringVar(&g.socketDir, "socket-dir", "", "take guests from a directory of sockets (DIR/NAME.sock or DIR/NAME/CHANNEL) instead of libvirt")
}

// source is where guests are found.
func (g *guestFlags) source() domains.Source {
	return domains.New(domains.Options{Connect: g.connect, SocketDir: g.socketDir, RuntimeDir: g.runDir})
}

// socket finds the socket of channel target of the --domain guest.
func (g *guestFlags) socket(ctx context.Context, target string, timeout time.Duration) (string, error) {
	return g.socketOf(ctx, g.domain, target, timeout)
}

// socketOf finds the socket of channel target of domain name: its own, or
// for the agent of a domain reached through libvirt (--via-libvirt, a
// remote --connect) a local bridge that passes each command to virsh
// qemu-agent-command.
func (g *guestFlags) socketOf(ctx context.Context, name, target string, timeout time.Duration) (string, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	if target == domains.AgentChannel && g.throughLibvirt() {
		if _, err := g.source().Find(ctx, name, target); err != nil {
			return "", fmt.Errorf("guest %q, channel %s: %w", name, target, err)
		}
		return g.bridgeFor(name, timeout)
	}
	return domains.FindSocket(ctx, g.source(), name, target)
}

// bridgeFor starts a bridge to the agent of libvirt domain name.
func (g *guestFlags) bridgeFor(name string, timeout time.Duration) (string, error) {
	b, err := domains.Virsh{Connect: g.connect}.NewBridge(name, timeout)
	if err != nil {
		return "", err
	}
	g.bridges.mu.Lock()
	g.bridges.list = append(g.bridges.list, b)
	g.bridges.mu.Unlock()
	return b.Socket(), nil
}

func (g *guestFlags) throughLibvirt() bool {
	return g.socketDir == "" && (!g.direct || domains.IsRemote(g.connect))
}

// closeBridges stops the libvirt bridges of this run.
func (g *guestFlags) closeBridges() {
	g.bridges.mu.Lock()
	defer g.bridges.mu.Unlock()
	for _, b := range g.bridges.list {
		b.Close()
	}
}

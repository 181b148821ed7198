package main

import (
	"context"

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
}

func (g *guestFlags) register(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVarP(&g.domain, "domain", "d", "", "libvirt domain whose channel socket to use (from its XML)")
	f.StringVarP(&g.connect, "connect", "c", "", "libvirt URI for --domain, passed to virsh (default: libvirt's runtime files, else virsh's default)")
	f.StringVar(&g.runDir, "libvirt-runtime-dir", domains.DefaultRuntimeDir, "libvirt's status files of running domains, read when no --connect is given")
	f.StringVar(&g.socketDir, "socket-dir", "", "take guests from a directory of sockets (DIR/NAME.sock or DIR/NAME/CHANNEL) instead of libvirt")
}

// source is where guests are found.
func (g *guestFlags) source() domains.Source {
	return domains.New(domains.Options{Connect: g.connect, SocketDir: g.socketDir, RuntimeDir: g.runDir})
}

// socket finds the socket of channel target of the --domain guest.
func (g *guestFlags) socket(ctx context.Context, target string) (string, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	return domains.FindSocket(ctx, g.source(), g.domain, target)
}

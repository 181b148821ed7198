// Command guestctl talks to a guest agent from the host, through the unix
// socket of the guest's agent channel (QEMU's -chardev socket), like
// `virsh qemu-agent-command` and qemu-ga-client.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/domains"
	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/qga"
	"github.com/spf13/cobra"
)

var version = "dev"

type options struct {
	socket  string
	timeout time.Duration
	noSync  bool
	guests  guestFlags
	json    bool // --json: JSON for scripts instead of text for people
	// Several guests at once (multi.go): --all, or --domain a,b,...
	all      bool
	parallel int
	targets  []guestTarget // resolved when several guests are named
}

func main() {
	root, o := newRootCmd()
	err := root.Execute()
	o.guests.closeBridges()
	if err != nil {
		var code exitCode
		if errors.As(err, &code) {
			os.Exit(int(code))
		}
		fmt.Fprintln(os.Stderr, "guestctl:", err)
		os.Exit(1)
	}
}

// extraCommands are added to the root command by files built with tags
// (docs.go: the hidden docs command of make doc).
var extraCommands []func() *cobra.Command

func newRootCmd() (*cobra.Command, *options) {
	o := &options{timeout: 10 * time.Second}
	root := &cobra.Command{
		Use:   "guestctl",
		Short: "Talk to a guest agent (guest-agent or qemu-ga) from the host",
		Long: `guestctl talks to the agent of a virtual machine from the host, through the
unix socket of the guest's agent channel (QEMU's -chardev socket,...
-device virtserialport,name=org.qemu.guest_agent.0), like virsh
qemu-agent-command and qemu-ga-client. Before each command it resynchronises
the stream with guest-sync-delimited, as libvirt does (--no-sync skips it).
It works with guest-agent and with qemu-ga.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&o.socket, "socket", "s", "", "unix socket of the guest's agent channel (or --domain)")
	root.PersistentFlags().DurationVar(&o.timeout, "timeout", 10*time.Second, "timeout of each exchange with the agent")
	root.PersistentFlags().BoolVar(&o.noSync, "no-sync", false, "skip the guest-sync-delimited handshake before the command")
	o.guests.register(root)
	root.PersistentFlags().BoolVar(&o.json, "json", false, "print JSON (one object per guest with several) instead of text for people")
	root.PersistentFlags().BoolVarP(&o.all, "all", "a", false, "every running guest with an agent channel (ping, info, call, exec and the query commands)")
	root.PersistentFlags().IntVar(&o.parallel, "parallel", 64, "guests talked to at once with --all or several --domain names")
	// Required by the commands that talk to an agent, not by help or
	// completion (cobra's required flag would refuse "completion bash").
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if !talksToAgent(cmd) {
			return nil
		}
		if o.all || strings.Contains(o.guests.domain, ",") {
			if o.socket != "" {
				return fmt.Errorf("--socket names one guest: not with --all or several --domain names")
			}
			return o.resolveTargets(cmdContext(cmd))
		}
		if cmd.Name() == "list" {
			return nil
		}
		switch {
		case o.socket != "" && o.guests.domain != "":
			return fmt.Errorf("--socket and --domain name two guests: give one")
		case o.socket == "" && o.guests.domain == "":
			return fmt.Errorf("no guest: give --socket PATH or --domain NAME")
		case o.guests.domain != "":
			s, err := o.guests.socket(cmdContext(cmd), domains.AgentChannel, o.timeout)
			if err != nil {
				return err
			}
			o.socket = s
		}
		return nil
	}

	root.AddCommand(newPingCmd(o), newInfoCmd(o), newCallCmd(o), newListCmd(o))
	root.AddCommand(&cobra.Command{
		Use: "raw JSON", Short: "Send one raw request line (no sync) and print the raw reply", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if err := o.oneGuest("raw"); err != nil {
				return err
			}
			c, err := qga.Dial(cmd.Context(), o.socket, o.timeout)
			if err != nil {
				return err
			}
			defer c.Close()
			ret, err := c.CallRaw([]byte(argv[0] + "\n"))
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(ret))
			return nil
		},
	})
	root.AddCommand(newNegotiatorCmd(o), newDaemonCmd(o))
	root.AddCommand(newExecCmd(o), newCpCmd(o))
	root.AddCommand(newSystemCmds(o)...)
	for _, add := range extraCommands {
		root.AddCommand(add())
	}
	return root, o
}

// talksToAgent tells whether cmd needs --socket: not help, cobra's
// completion command and its shells, nor docs (make doc).
func talksToAgent(cmd *cobra.Command) bool {
	for c := cmd; c.HasParent(); c = c.Parent() {
		switch c.Name() {
		case "help", "completion", "docs", "negotiator", "daemon": // negotiator's channels: their own lookup
			return false
		}
	}
	return true
}

// Command guestctl talks to a guest agent from the host, through the unix
// socket of the guest's agent channel (QEMU's -chardev socket), like
// `virsh qemu-agent-command` and qemu-ga-client.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
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

func newRootCmd() *cobra.Command {
	o := &options{}
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
	// Required by the commands that talk to an agent, not by help or
	// completion (cobra's required flag would refuse "completion bash").
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if !talksToAgent(cmd) {
			return nil
		}
		switch {
		case o.socket != "" && o.guests.domain != "":
			return fmt.Errorf("--socket and --domain name two guests: give one")
		case o.socket == "" && o.guests.domain == "":
			return fmt.Errorf("no guest: give --socket PATH or --domain NAME")
		case o.guests.domain != "":
			s, err := o.guests.socket(cmd.Context(), domains.AgentChannel)
			if err != nil {
				return err
			}
			o.socket = s
		}
		return nil
	}

	root.AddCommand(&cobra.Command{
		Use: "ping", Short: "Check that the agent answers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			if _, err := call(cmd.Context(), o, "guest-ping", nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "agent answered in %s\n", time.Since(start).Round(time.Microsecond))
			return nil
		},
	})
	root.AddCommand(&cobra.Command{
		Use: "info", Short: "Show the agent's version and commands", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ret, err := call(cmd.Context(), o, "guest-info", nil)
			if err != nil {
				return err
			}
			var info struct {
				Version  string `json:"version"`
				Commands []struct {
					Name            string `json:"name"`
					Enabled         bool   `json:"enabled"`
					SuccessResponse bool   `json:"success-response"`
				} `json:"supported_commands"`
			}
			if err := json.Unmarshal(ret, &info); err != nil {
				return fmt.Errorf("decode guest-info: %w", err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "version: %s\n", info.Version)
			for _, c := range info.Commands {
				state := "enabled"
				if !c.Enabled {
					state = "disabled"
				}
				fmt.Fprintf(w, "  %-36s %s\n", c.Name, state)
			}
			return nil
		},
	})
	root.AddCommand(&cobra.Command{
		Use: "call NAME [JSON-ARGUMENTS]", Short: "Run any command and print its JSON result", Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, argv []string) error {
			var args any
			if len(argv) == 2 {
				var raw json.RawMessage
				if err := json.Unmarshal([]byte(argv[1]), &raw); err != nil {
					return fmt.Errorf("arguments are not JSON: %w", err)
				}
				args = raw
			}
			ret, err := call(cmd.Context(), o, argv[0], args)
			if err != nil {
				return err
			}
			var out bytes.Buffer
			if json.Indent(&out, ret, "", "  ") != nil {
				out.Reset()
				out.Write(ret)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.String())
			return nil
		},
	})
	root.AddCommand(&cobra.Command{
		Use: "raw JSON", Short: "Send one raw request line (no sync) and print the raw reply", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, argv []string) error {
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
	for _, add := range extraCommands {
		root.AddCommand(add())
	}
	return root
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

// call connects, syncs and runs one command.
func call(ctx context.Context, o *options, command string, args any) (json.RawMessage, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	c, err := qga.Dial(ctx, o.socket, o.timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if !o.noSync {
		if err := c.Sync(); err != nil {
			return nil, err
		}
	}
	return c.Call(command, args)
}

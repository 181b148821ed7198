package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/domains"
	"github.com/guest-agent/guest-agent/shared/negotiator"
	"github.com/spf13/cobra"
)

// newNegotiatorCmd is guestctl negotiator: the host calling a guest over
// negotiator's host-to-guest channel, as negotiator-host does.
func newNegotiatorCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "negotiator",
		Short: "Call a guest over negotiator's host-to-guest channel",
		Long: `guestctl negotiator talks negotiator's protocol to the agent of a guest over
the guest's ` + negotiator.HostToGuestChannel + ` channel (libvirt's
<channel type='unix'> with that target name, or --socket). GUEST is a libvirt
domain (or a name in --socket-dir); --timeout bounds each call (0: none).`,
	}
	cmd.AddCommand(&cobra.Command{
		Use: "list-guests", Short: "List the running guests that have the channel", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			guests, err := o.guests.source().Guests(cmdContext(cmd), negotiator.HostToGuestChannel)
			if err != nil {
				return err
			}
			for _, g := range guests {
				if g.Socket != "" {
					fmt.Fprintln(cmd.OutOrStdout(), g.Name)
				}
			}
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "list-commands [GUEST]", Short: "List the commands a guest offers its host", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, closeFn, err := dialNegotiator(cmdContext(cmd), o, args)
			if err != nil {
				return err
			}
			defer closeFn()
			names, err := c.ListCommands(cmdContext(cmd))
			if err != nil {
				return err
			}
			for _, n := range names {
				fmt.Fprintln(cmd.OutOrStdout(), n)
			}
			return nil
		},
	})
	var withStdin bool
	execCmd := &cobra.Command{
		Use:   "exec GUEST COMMAND [ARGS...]",
		Short: "Run a guest's command and print its output; fail when it fails",
		Long: `exec runs one of the guest's commands (list-commands) with ARGS and prints
its standard output. A command that fails makes guestctl exit non-zero with
the guest's error. With --stdin, guestctl's standard input is the command's.
With --socket, GUEST is omitted.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			guest := args[:1]
			if o.socket != "" {
				guest = nil
			} else {
				args = args[1:]
			}
			if len(args) == 0 {
				return errors.New("no command given")
			}
			var input *string
			if withStdin {
				data, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return fmt.Errorf("read stdin: %w", err)
				}
				s := string(data)
				input = &s
			}
			c, closeFn, err := dialNegotiator(cmdContext(cmd), o, guest)
			if err != nil {
				return err
			}
			defer closeFn()
			out, err := c.Execute(cmdContext(cmd), args, input)
			if err != nil {
				return err
			}
			printOutput(cmd.OutOrStdout(), out)
			return nil
		},
	}
	execCmd.Flags().BoolVar(&withStdin, "stdin", false, "pass standard input to the command")
	// Flags after COMMAND belong to it.
	execCmd.Flags().SetInterspersed(false)
	cmd.AddCommand(execCmd)
	return cmd
}

// printOutput prints a command's output ending with one newline.
func printOutput(w io.Writer, out string) {
	if out == "" {
		return
	}
	if !strings.HasSuffix(out, "\n") {
		out += "\n"
	}
	io.WriteString(w, out)
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// dialNegotiator connects to the host-to-guest channel of the guest named
// by args[0], --domain or --socket.
func dialNegotiator(ctx context.Context, o *options, args []string) (*negotiator.Client, func(), error) {
	sock := o.socket
	switch {
	case len(args) == 1 && sock != "":
		return nil, nil, errors.New("--socket and GUEST name two guests: give one")
	case len(args) == 1:
		s, err := domains.FindSocket(ctx, o.guests.source(), args[0], negotiator.HostToGuestChannel)
		if err != nil {
			return nil, nil, err
		}
		sock = s
	case o.guests.domain != "":
		s, err := domains.FindSocket(ctx, o.guests.source(), o.guests.domain, negotiator.HostToGuestChannel)
		if err != nil {
			return nil, nil, err
		}
		sock = s
	case sock == "":
		return nil, nil, errors.New("no guest: give GUEST, --domain NAME or --socket PATH")
	}
	var d net.Dialer
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", sock, err)
	}
	return negotiator.NewClient(conn, o.timeout), func() { conn.Close() }, nil
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/domains"
	"github.com/spf13/cobra"
)

func newPingCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use: "ping", Short: "Check that the agent answers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runOp(cmd, o, func(ctx context.Context, a *agent) (result, error) {
				start := time.Now()
				if err := a.call(ctx, o, "guest-ping", nil, nil); err != nil {
					return result{}, err
				}
				took := time.Since(start)
				return result{text: fmt.Sprintf("agent answered in %s\n", took.Round(time.Microsecond)),
					value: map[string]any{"answered": true, "us": took.Microseconds()}}, nil
			})
		},
	}
}

// guestInfo is guest-info's result.
type guestInfo struct {
	Version  string `json:"version"`
	Commands []struct {
		Name            string `json:"name"`
		Enabled         bool   `json:"enabled"`
		SuccessResponse bool   `json:"success-response"`
	} `json:"supported_commands"`
}

func newInfoCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use: "info", Short: "Show the agent's version and commands", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runOp(cmd, o, func(ctx context.Context, a *agent) (result, error) {
				var info guestInfo
				if err := a.call(ctx, o, "guest-info", nil, &info); err != nil {
					return result{}, err
				}
				var b strings.Builder
				if o.multi() {
					enabled := 0
					for _, c := range info.Commands {
						if c.Enabled {
							enabled++
						}
					}
					fmt.Fprintf(&b, "version %s, %d commands (%d enabled)\n", info.Version, len(info.Commands), enabled)
				} else {
					fmt.Fprintf(&b, "version: %s\n", info.Version)
					for _, c := range info.Commands {
						state := "enabled"
						if !c.Enabled {
							state = "disabled"
						}
						fmt.Fprintf(&b, "  %-36s %s\n", c.Name, state)
					}
				}
				return result{text: b.String(), value: info}, nil
			})
		},
	}
}

func newCallCmd(o *options) *cobra.Command {
	return &cobra.Command{
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
			return runOp(cmd, o, func(ctx context.Context, a *agent) (result, error) {
				var ret json.RawMessage
				if err := a.call(ctx, o, argv[0], args, &ret); err != nil {
					return result{}, err
				}
				var out bytes.Buffer
				if o.multi() {
					_ = json.Compact(&out, ret)
				} else if json.Indent(&out, ret, "", "  ") != nil {
					out.Reset()
					out.Write(ret)
				}
				out.WriteByte('\n')
				return result{text: out.String(), value: ret}, nil
			})
		},
	}
}

// listed is one guest of guestctl list.
type listed struct {
	Name    string `json:"name"`
	Socket  string `json:"socket,omitempty"`
	Agent   string `json:"agent"` // answers, no channel, no answer
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
	Ms      int64  `json:"ms,omitempty"`
}

func newListCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the host's running guests and whether their agent answers",
		Long: `list shows every running guest of the host (libvirt's runtime files, virsh
with --connect, or --socket-dir) and whether its agent answers on its
org.qemu.guest_agent.0 channel (guest-info, within --timeout), with the
agent's version. --json prints one object per guest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmdContext(cmd)
			guests, err := o.guests.source().Guests(ctx, domains.AgentChannel)
			if err != nil {
				return err
			}
			out := make([]listed, len(guests))
			done := make(chan struct{})
			sem := make(chan struct{}, max(o.parallel, 1))
			for i, g := range guests {
				go func() {
					defer func() { done <- struct{}{} }()
					out[i] = listed{Name: g.Name, Socket: g.Socket, Agent: "no channel"}
					if g.Socket == "" {
						return
					}
					sem <- struct{}{}
					defer func() { <-sem }()
					start := time.Now()
					gctx, cancel := context.WithTimeout(ctx, o.timeout)
					defer cancel()
					var info guestInfo
					sock := g.Socket
					if o.guests.throughLibvirt() {
						var err error
						if sock, err = o.guests.bridgeFor(g.Name, o.timeout); err != nil {
							out[i].Agent, out[i].Error = "no answer", err.Error()
							return
						}
					}
					a, err := openSession(gctx, o, sock)
					if err == nil {
						err = a.call(gctx, o, "guest-info", nil, &info)
						a.Close()
					}
					out[i].Ms = time.Since(start).Milliseconds()
					if err != nil {
						out[i].Agent, out[i].Error = "no answer", err.Error()
						return
					}
					out[i].Agent, out[i].Version = "answers", info.Version
				}()
			}
			for range guests {
				<-done
			}
			w := cmd.OutOrStdout()
			if o.json {
				for _, l := range out {
					b, _ := json.Marshal(l)
					fmt.Fprintf(w, "%s\n", b)
				}
				return nil
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tAGENT\tVERSION\tSOCKET")
			for _, l := range out {
				agent := l.Agent
				if l.Error != "" {
					agent += " (" + l.Error + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Name, agent, dash(l.Version), dash(l.Socket))
			}
			return tw.Flush()
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	"github.com/spf13/cobra"
)

// maxCallReply bounds the reply the in-guest client reads: the agent's
// largest replies (a guest-file-read of 48 MiB, base64) stay below it.
const maxCallReply = 128 << 20

// newCallCmd is the in-guest client of the command monitor: shell scripts
// inside the guest call the agent's commands through its local socket.
func newCallCmd(f *flags) *cobra.Command {
	var socket string
	var timeout time.Duration
	var rawReply bool
	cmd := &cobra.Command{
		Use:   "call NAME [JSON]",
		Short: "Call a command of the running agent through its local socket (the command monitor)",
		Long: `call sends one request to the agent's command monitor (command_monitor in
agent.hcl(5)), as the Google guest agent's clients do: {"Command": NAME} plus
the members of the JSON object given as arguments. It prints the result (a
string as it is, anything else as JSON; nothing when the command returns
nothing) and exits 0; when the agent answers with a non-zero Status it prints
the StatusMessage on stderr and exits 1.

The socket is --socket, else the path agent.hcl gives the command monitor,
else /run/guest-agent/commands.sock. Who may call what is the channel's
policy: by default anyone may call the read-only commands (guest-ping,
guest-info, guest-get-osinfo, guest-get-host-name, guest-get-timezone,
guest-get-load, guest-network-get-interfaces) and root every command.`,
		Example: `  guest-agent call guest-get-osinfo
  guest-agent call guest-get-host-name
  guest-agent call guest-fsfreeze-freeze-list '{"mountpoints": ["/srv"]}'`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if socket == "" {
				socket = monitorSocket(f.configPath)
			}
			var arguments string
			if len(args) == 2 {
				arguments = args[1]
			}
			req, err := monitorRequest(args[0], arguments)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			reply, err := callMonitor(ctx, socket, req)
			if err != nil {
				return err
			}
			if rawReply {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s\n", reply)
				return err
			}
			return printResult(cmd.OutOrStdout(), args[0], reply)
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "the command monitor's socket (default: agent.hcl's, else "+config.DefaultMonitorPath+")")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (default: wait; the agent bounds every command by limits.command_timeout)")
	cmd.Flags().BoolVar(&rawReply, "raw", false, "print the whole reply as the agent sent it, Status included, and exit 0 whatever the Status")
	return cmd
}

// monitorSocket is the socket agent.hcl gives the command monitor; the
// default when the file says nothing or cannot be read (a user other than
// root may not read it).
func monitorSocket(configPath string) string {
	cfg, err := config.Load(configPath, false)
	if err != nil {
		return config.DefaultMonitorPath
	}
	if m := cfg.CommandMonitor; m != nil && m.Enabled && m.Path != "" {
		return m.Path
	}
	for _, ch := range cfg.Channels {
		if ch.Dialect == config.MonitorDialect && ch.Path != "" {
			return ch.Path
		}
	}
	return config.DefaultMonitorPath
}

// monitorRequest is {"Command": name} plus the members of the arguments
// object.
func monitorRequest(name, arguments string) ([]byte, error) {
	members := map[string]json.RawMessage{}
	if arguments != "" {
		dec := json.NewDecoder(bytes.NewReader([]byte(arguments)))
		if err := dec.Decode(&members); err != nil {
			return nil, fmt.Errorf("arguments must be a JSON object: %w", err)
		}
		if dec.More() {
			return nil, errors.New("arguments must be one JSON object, there is more after it")
		}
		if members == nil { // "null"
			members = map[string]json.RawMessage{}
		}
	}
	for _, key := range []string{"Command", "Name"} {
		if _, ok := members[key]; ok {
			return nil, fmt.Errorf("arguments must not contain %q: it names the command", key)
		}
	}
	cmdName, err := json.Marshal(name)
	if err != nil {
		return nil, err
	}
	members["Command"] = cmdName
	return json.Marshal(members)
}

// callMonitor sends one request the way the command monitor's clients do:
// the JSON object without a newline, then everything up to EOF is the
// reply (the agent closes the connection after it).
func callMonitor(ctx context.Context, socket string, req []byte) ([]byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to the agent's command monitor: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(req); err != nil {
		return nil, fmt.Errorf("send the request to %s: %w", socket, err)
	}
	reply, err := io.ReadAll(io.LimitReader(conn, maxCallReply+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no reply from %s: %w", socket, ctx.Err())
		}
		return nil, fmt.Errorf("read the reply from %s: %w", socket, err)
	}
	if len(reply) > maxCallReply {
		return nil, fmt.Errorf("the reply from %s is over %d bytes", socket, maxCallReply)
	}
	if len(bytes.TrimSpace(reply)) == 0 {
		return nil, fmt.Errorf("%s closed the connection without a reply", socket)
	}
	return reply, nil
}

// printResult prints what the command returned: the reply's members other
// than Status and StatusMessage ("Result" alone: its value); a string as
// is, for shell scripts. A non-zero Status is the error.
func printResult(w io.Writer, name string, reply []byte) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(reply, &members); err != nil || members == nil {
		return fmt.Errorf("the agent's reply is not a JSON object: %q", truncate(reply, 200))
	}
	var status int64
	if err := json.Unmarshal(members["Status"], &status); err != nil {
		return fmt.Errorf("the agent's reply has no numeric Status: %q", truncate(reply, 200))
	}
	var message string
	_ = json.Unmarshal(members["StatusMessage"], &message)
	if status != 0 {
		return fmt.Errorf("%s: %s (Status %d)", name, message, status)
	}
	delete(members, "Status")
	delete(members, "StatusMessage")
	var result any = members
	switch {
	case len(members) == 0:
		return nil
	case len(members) == 1 && members["Result"] != nil:
		var s string
		if json.Unmarshal(members["Result"], &s) == nil {
			_, err := fmt.Fprintln(w, s)
			return err
		}
		result = members["Result"]
	}
	out, err := json.MarshalIndent(result, "", "  ")
	if err != nil {
		return fmt.Errorf("print the result: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", out)
	return err
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

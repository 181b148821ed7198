package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// The guest's state and its administration: qemu-ga's commands shown as
// tables for people, or their JSON (--json) for scripts. Works with
// guest-agent and qemu-ga alike.

func newSystemCmds(o *options) []*cobra.Command {
	cmds := []*cobra.Command{
		queryCmd(o, "osinfo", "Show the guest's operating system", "guest-get-osinfo", renderOSInfo),
		queryCmd(o, "fsinfo", "Show the guest's mounted filesystems", "guest-get-fsinfo", renderFSInfo),
		queryCmd(o, "ifaddr", "Show the guest's network interfaces and addresses", "guest-network-get-interfaces", renderIfaddr),
		queryCmd(o, "users", "Show the users logged in to the guest", "guest-get-users", renderUsers),
		queryCmd(o, "vcpus", "Show the guest's virtual CPUs", "guest-get-vcpus", renderVCPUs),
		newTimeCmd(o), newFreezeCmd(o), newThawCmd(o), newPasswordCmd(o), newSSHKeysCmd(o),
	}
	for _, mode := range []struct{ name, mode, short string }{
		{"shutdown", "powerdown", "Power the guest off (guest-shutdown powerdown)"},
		{"reboot", "reboot", "Reboot the guest (guest-shutdown reboot)"},
		{"halt", "halt", "Halt the guest (guest-shutdown halt)"},
	} {
		cmds = append(cmds, newShutdownCmd(o, mode.name, mode.mode, mode.short))
	}
	return cmds
}

// queryCmd is a command that runs one query and renders its result; it
// works over several guests too.
func queryCmd(o *options, use, short, command string, render func(json.RawMessage) (string, error)) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short + " (" + command + ")", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runOp(cmd, o, func(ctx context.Context, a *agent) (result, error) {
				var ret json.RawMessage
				if err := a.call(ctx, o, command, nil, &ret); err != nil {
					return result{}, err
				}
				text, err := render(ret)
				if err != nil {
					return result{}, fmt.Errorf("%s: %w", command, err)
				}
				return result{text: text, value: ret}, nil
			})
		},
	}
}

// table renders rows under a header, columns aligned.
func table(header string, rows [][]string) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
	return b.String()
}

func renderOSInfo(ret json.RawMessage) (string, error) {
	var info map[string]any
	if err := json.Unmarshal(ret, &info); err != nil {
		return "", err
	}
	keys := make([]string, 0, len(info))
	for k := range info {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var rows [][]string
	for _, k := range keys {
		rows = append(rows, []string{k, fmt.Sprint(info[k])})
	}
	return table("FIELD\tVALUE", rows), nil
}

func humanBytes(n *uint64) string {
	if n == nil {
		return "-"
	}
	v := float64(*n)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if v < 1024 || u == "TiB" {
			if u == "B" {
				return fmt.Sprintf("%.0f %s", v, u)
			}
			return fmt.Sprintf("%.1f %s", v, u)
		}
		v /= 1024
	}
	return ""
}

func renderFSInfo(ret json.RawMessage) (string, error) {
	var fss []struct {
		Name       string  `json:"name"`
		Mountpoint string  `json:"mountpoint"`
		Type       string  `json:"type"`
		Used       *uint64 `json:"used-bytes"`
		Total      *uint64 `json:"total-bytes"`
		Disks      []struct {
			Dev string `json:"dev"`
		} `json:"disk"`
	}
	if err := json.Unmarshal(ret, &fss); err != nil {
		return "", err
	}
	var rows [][]string
	for _, f := range fss {
		var devs []string
		for _, d := range f.Disks {
			if d.Dev != "" {
				devs = append(devs, d.Dev)
			}
		}
		rows = append(rows, []string{f.Mountpoint, f.Type, f.Name, humanBytes(f.Used), humanBytes(f.Total), dash(strings.Join(devs, ","))})
	}
	return table("MOUNTPOINT\tTYPE\tDEVICE\tUSED\tTOTAL\tDISKS", rows), nil
}

func renderIfaddr(ret json.RawMessage) (string, error) {
	var ifs []struct {
		Name  string `json:"name"`
		MAC   string `json:"hardware-address"`
		Addrs []struct {
			Type   string `json:"ip-address-type"`
			Addr   string `json:"ip-address"`
			Prefix int    `json:"prefix"`
		} `json:"ip-addresses"`
	}
	if err := json.Unmarshal(ret, &ifs); err != nil {
		return "", err
	}
	var rows [][]string
	for _, i := range ifs {
		if len(i.Addrs) == 0 {
			rows = append(rows, []string{i.Name, dash(i.MAC), "-", "-"})
		}
		for n, a := range i.Addrs {
			name, mac := i.Name, dash(i.MAC)
			if n > 0 {
				name, mac = "", ""
			}
			rows = append(rows, []string{name, mac, a.Type, fmt.Sprintf("%s/%d", a.Addr, a.Prefix)})
		}
	}
	return table("INTERFACE\tMAC\tFAMILY\tADDRESS", rows), nil
}

func renderUsers(ret json.RawMessage) (string, error) {
	var users []struct {
		User      string  `json:"user"`
		Domain    string  `json:"domain"`
		LoginTime float64 `json:"login-time"`
	}
	if err := json.Unmarshal(ret, &users); err != nil {
		return "", err
	}
	var rows [][]string
	for _, u := range users {
		at := time.Unix(0, int64(u.LoginTime*1e9)).UTC().Format(time.RFC3339)
		rows = append(rows, []string{u.User, dash(u.Domain), at})
	}
	return table("USER\tDOMAIN\tLOGIN (UTC)", rows), nil
}

func renderVCPUs(ret json.RawMessage) (string, error) {
	var cpus []struct {
		ID         int  `json:"logical-id"`
		Online     bool `json:"online"`
		CanOffline bool `json:"can-offline"`
	}
	if err := json.Unmarshal(ret, &cpus); err != nil {
		return "", err
	}
	var rows [][]string
	for _, c := range cpus {
		rows = append(rows, []string{fmt.Sprint(c.ID), yesNo(c.Online), yesNo(c.CanOffline)})
	}
	return table("CPU\tONLINE\tCAN-OFFLINE", rows), nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func newTimeCmd(o *options) *cobra.Command {
	var sync bool
	cmd := &cobra.Command{
		Use:   "time [--sync]",
		Short: "Show the guest's clock and its offset from the host's; --sync sets it to the host's",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runOp(cmd, o, func(ctx context.Context, a *agent) (result, error) {
				if sync {
					// guest-set-time with the host's clock, in nanoseconds,
					// ahead by half a round trip, measured first with
					// guest-get-time (which also wakes the agent's plugin
					// that serves both, so the set is not late by its start).
					t0 := time.Now()
					if err := a.call(ctx, o, "guest-get-time", nil, nil); err != nil {
						return result{}, err
					}
					half := time.Since(t0) / 2
					if err := a.call(ctx, o, "guest-set-time", map[string]any{"time": time.Now().Add(half).UnixNano()}, nil); err != nil {
						return result{}, err
					}
				}
				before := time.Now()
				var ns int64
				if err := a.call(ctx, o, "guest-get-time", nil, &ns); err != nil {
					return result{}, err
				}
				after := time.Now()
				// Compared with the host's clock half way through the exchange.
				host := before.Add(after.Sub(before) / 2)
				offset := time.Unix(0, ns).Sub(host)
				text := fmt.Sprintf("%s (%+.3f s from the host)\n", time.Unix(0, ns).UTC().Format(time.RFC3339Nano), offset.Seconds())
				if sync {
					text = "set to the host's clock; now " + text
				}
				return result{text: text, value: map[string]any{"time-ns": ns, "offset-ns": offset.Nanoseconds(), "synced": sync}}, nil
			})
		},
	}
	cmd.Flags().BoolVar(&sync, "sync", false, "set the guest's clock to the host's (guest-set-time) first")
	return cmd
}

func newFreezeCmd(o *options) *cobra.Command {
	var hold time.Duration
	var mountpoints []string
	cmd := &cobra.Command{
		Use:   "freeze [--for D] [--mountpoint M]...",
		Short: "Freeze the guest's filesystems (all, or the --mountpoint ones)",
		Long: `freeze freezes the guest's filesystems (guest-fsfreeze-freeze, or
-freeze-list with --mountpoint) for a consistent snapshot. With --for D
guestctl holds the freeze for D, then thaws, also when it is interrupted
(Ctrl-C, SIGTERM): a freeze that cannot be left in place by mistake.
Without it the guest stays frozen until guestctl thaw (guest-agent thaws on
its own after limits.fsfreeze_max, 10 minutes by default; qemu-ga never).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.oneGuest("freeze"); err != nil {
				return err
			}
			ctx := cmdContext(cmd)
			a, err := openSession(ctx, o, o.socket)
			if err != nil {
				return err
			}
			defer a.Close()
			sigs := make(chan os.Signal, 1)
			if hold > 0 {
				signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
				defer signal.Stop(sigs)
			}
			var n int
			if len(mountpoints) > 0 {
				err = a.call(ctx, o, "guest-fsfreeze-freeze-list", map[string]any{"mountpoints": mountpoints}, &n)
			} else {
				err = a.call(ctx, o, "guest-fsfreeze-freeze", nil, &n)
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if hold == 0 {
				return printFreeze(w, o, "frozen", n, "thaw with guestctl thaw")
			}
			if err := printFreeze(w, o, "frozen", n, fmt.Sprintf("thawing in %s", hold)); err != nil {
				return err
			}
			t := time.NewTimer(hold)
			defer t.Stop()
			why := "time up"
			select {
			case <-t.C:
			case s := <-sigs:
				why = s.String()
			}
			var thawed int
			// Thaw with a fresh deadline: the command's may be what ended.
			tctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			defer cancel()
			if err := a.call(tctx, o, "guest-fsfreeze-thaw", nil, &thawed); err != nil {
				return fmt.Errorf("thaw (%s): %w", why, err)
			}
			return printFreeze(w, o, "thawed", thawed, why)
		},
	}
	cmd.Flags().DurationVar(&hold, "for", 0, "thaw after this long (and on Ctrl-C); 0: leave frozen")
	cmd.Flags().StringArrayVar(&mountpoints, "mountpoint", nil, "freeze only this mount point (repeatable)")
	return cmd
}

func printFreeze(w io.Writer, o *options, what string, n int, note string) error {
	if o.json {
		b, _ := json.Marshal(map[string]any{what: n})
		_, err := fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(w, "%s %d filesystems (%s)\n", what, n, note)
	return err
}

func newThawCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use: "thaw", Short: "Thaw the guest's filesystems (guest-fsfreeze-thaw)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runOp(cmd, o, func(ctx context.Context, a *agent) (result, error) {
				var n int
				if err := a.call(ctx, o, "guest-fsfreeze-thaw", nil, &n); err != nil {
					return result{}, err
				}
				return result{text: fmt.Sprintf("thawed %d filesystems\n", n), value: map[string]int{"thawed": n}}, nil
			})
		},
	}
}

// shutdownAnswer is how long guestctl waits for an error after
// guest-shutdown: a successful one is never answered.
const shutdownAnswer = time.Second

func newShutdownCmd(o *options, name, mode, short string) *cobra.Command {
	return &cobra.Command{
		Use: name, Short: short, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runOp(cmd, o, func(ctx context.Context, a *agent) (result, error) {
				p, err := a.Start("guest-shutdown", map[string]any{"mode": mode})
				if err != nil {
					return result{}, err
				}
				wctx, cancel := context.WithTimeout(ctx, shutdownAnswer)
				defer cancel()
				_, err = p.Wait(wctx)
				if err != nil && !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "EOF") {
					return result{}, fmt.Errorf("guest-shutdown: %w", err)
				}
				return result{text: fmt.Sprintf("%s requested\n", name), value: map[string]string{"requested": mode}}, nil
			})
		},
	}
}

func newPasswordCmd(o *options) *cobra.Command {
	var crypted bool
	cmd := &cobra.Command{
		Use:   "password USER",
		Short: "Set a guest user's password, read from the terminal (without echo) or stdin",
		Long: `password sets USER's password in the guest (guest-set-user-password). The
password is read from the terminal without echo, or as the first line of
stdin; never from the command line. --crypted: it is already a crypt(3)
hash.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			pw, err := readPassword(cmd)
			if err != nil {
				return err
			}
			return runOp(cmd, o, func(ctx context.Context, a *agent) (result, error) {
				if err := a.call(ctx, o, "guest-set-user-password", map[string]any{
					"username": argv[0], "password": base64.StdEncoding.EncodeToString([]byte(pw)), "crypted": crypted}, nil); err != nil {
					return result{}, err
				}
				return result{text: fmt.Sprintf("password of %s set\n", argv[0]), value: map[string]any{"user": argv[0], "set": true}}, nil
			})
		},
	}
	cmd.Flags().BoolVar(&crypted, "crypted", false, "the password is a crypt(3) hash")
	return cmd
}

func readPassword(cmd *cobra.Command) (string, error) {
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(cmd.ErrOrStderr(), "password: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(cmd.ErrOrStderr())
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		return string(b), nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && (err != io.EOF || line == "") {
		return "", errors.New("no password on stdin")
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func newSSHKeysCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ssh-keys USER list|add|remove [KEY...]",
		Short: "List, add or remove a guest user's SSH authorized keys",
		Long: `ssh-keys manages USER's ~/.ssh/authorized_keys in the guest
(guest-ssh-get-authorized-keys, -add-, -remove-). add and remove take the
keys as arguments, or one per line on stdin when none are given.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, argv []string) error {
			user, action, keys := argv[0], argv[1], argv[2:]
			switch action {
			case "list":
				if len(keys) > 0 {
					return errors.New("list takes no keys")
				}
			case "add", "remove":
				if len(keys) == 0 {
					sc := bufio.NewScanner(cmd.InOrStdin())
					for sc.Scan() {
						if k := strings.TrimSpace(sc.Text()); k != "" && !strings.HasPrefix(k, "#") {
							keys = append(keys, k)
						}
					}
					if len(keys) == 0 {
						return fmt.Errorf("%s: no keys given", action)
					}
				}
			default:
				return fmt.Errorf("ssh-keys %q: want list, add or remove", action)
			}
			return runOp(cmd, o, func(ctx context.Context, a *agent) (result, error) {
				switch action {
				case "add", "remove":
					if err := a.call(ctx, o, "guest-ssh-"+action+"-authorized-keys", map[string]any{"username": user, "keys": keys}, nil); err != nil {
						return result{}, err
					}
					verb := map[string]string{"add": "added", "remove": "removed"}[action]
					return result{text: fmt.Sprintf("%d keys %s for %s\n", len(keys), verb, user), value: map[string]any{verb: len(keys)}}, nil
				}
				var got struct {
					Keys []string `json:"keys"`
				}
				if err := a.call(ctx, o, "guest-ssh-get-authorized-keys", map[string]any{"username": user}, &got); err != nil {
					return result{}, err
				}
				var b strings.Builder
				for _, k := range got.Keys {
					b.WriteString(k + "\n")
				}
				return result{text: b.String(), value: got}, nil
			})
		},
	}
	return cmd
}

package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/hostd"
	"github.com/guest-agent/guest-agent/shared/negotiator"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

// newDaemonCmd is guestctl daemon: negotiator's host daemon, answering the
// calls of every running guest over its guest-to-host channel.
func newDaemonCmd(o *options) *cobra.Command {
	var (
		dirs            []string
		noBuiltins      bool
		rescan, recheck time.Duration
		backoffMax      time.Duration
		frameTimeout    time.Duration
		writeTimeout    time.Duration
		maxRequest      int64
		maxOutput       int64
		commandTimeout  time.Duration
		verbose         bool
	)
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Answer the guests' negotiator calls from the host's command directories",
		Long: `guestctl daemon keeps a connection to the ` + negotiator.GuestToHostChannel + `
channel of every running guest (libvirt, or --socket-dir) and answers the
guests' list_commands and execute calls from the host's command directories
(--commands-dir, default ` + negotiator.DefaultUserCommandsDir + `) and the
built-in commands. Each command runs with NEGOTIATOR_GUEST set to the calling
guest's name. Guests that start are picked up and guests that stop dropped
within --rescan; a guest without the channel is looked at again every
--recheck; a broken connection is retried with backoff. One process, one
goroutine per guest: a slow command holds up only its own guest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := hclog.Info
			if verbose {
				level = hclog.Debug
			}
			log := hclog.New(&hclog.LoggerOptions{Name: "guestctl-daemon", Level: level, Output: cmd.ErrOrStderr()})
			runner := &negotiator.Runner{Dirs: dirs, Timeout: commandTimeout, MaxOutputBytes: maxOutput, KillWithParent: true}
			if !noBuiltins {
				runner.Builtins = negotiator.DefaultBuiltinSources().Builtins()
			}
			d, err := hostd.New(hostd.Options{
				Source: o.guests.source(), Runner: runner,
				Rescan: rescan, Recheck: recheck, BackoffMax: backoffMax,
				Serve:  negotiator.ServeOptions{MaxMessageBytes: maxRequest, FrameTimeout: frameTimeout, WriteTimeout: writeTimeout},
				Logger: log,
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmdContext(cmd), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log.Info("started", "commands_dirs", fmt.Sprint(dirs), "pid", os.Getpid())
			err = d.Run(ctx)
			log.Info("stopped")
			return err
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&dirs, "commands-dir", []string{negotiator.DefaultUserCommandsDir}, "directory of the commands guests may run (repeatable; searched in order)")
	f.BoolVar(&noBuiltins, "no-builtins", false, "serve no built-in commands (find-disk-usage, ...)")
	f.DurationVar(&commandTimeout, "command-timeout", negotiator.DefaultTimeout*time.Second, "one command; its process group is killed after it (0: none)")
	f.DurationVar(&frameTimeout, "request-timeout", negotiator.DefaultTimeout*time.Second, "from a request's first byte to its last; then an error reply and a reconnect (0: none)")
	f.DurationVar(&writeTimeout, "write-timeout", negotiator.DefaultTimeout*time.Second, "writing one reply to a guest that reads nothing (0: none)")
	f.DurationVar(&rescan, "rescan", hostd.DefaultRescan, "how often running guests are listed (new ones picked up, stopped ones dropped)")
	f.DurationVar(&recheck, "recheck", hostd.DefaultRecheck, "how often a guest without the channel is looked at again (virsh sources)")
	f.DurationVar(&backoffMax, "backoff-max", hostd.DefaultBackoffMax, "longest delay before reconnecting to a guest whose channel broke")
	f.Int64Var(&maxRequest, "max-request-bytes", 16<<20, "one request from a guest; larger ones get an error reply")
	f.Int64Var(&maxOutput, "max-output-bytes", negotiator.DefaultMaxOutputBytes, "a command's standard output; more is an error")
	f.BoolVarP(&verbose, "verbose", "v", false, "log connects, disconnects and reconnects")
	return cmd
}

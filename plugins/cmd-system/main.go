// Command guest-agent-cmd-system serves qemu-ga's system commands on Linux:
// power (guest-shutdown, guest-suspend-*), filesystem freeze and trim, time
// and time zone, OS, host and user information, CPU, memory and disk state
// and statistics, SSH authorized keys and user passwords.
//
// Each command family lives in its own file and follows what qemu-ga does in
// qga/commands-posix.c and qga/commands-linux.c of current QEMU: same argument
// names, result shapes, error texts and helper programs.
package main

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

var version = "dev"

// system is the plugin's state. Everything a handler needs hangs off it: no
// package-level mutable state, so tests build as many independent instances
// as they like.
type system struct {
	opts       options
	runtimeDir string // the frozen flag (a tmpfs)
	log        hclog.Logger

	// freezeMu serialises freeze and thaw: two concurrent requests must not
	// interleave FIFREEZE and FITHAW calls or the hook script runs.
	freezeMu sync.Mutex
	// frozen mirrors qemu-ga's ga_is_frozen(), backed by the state file so a
	// restarted plugin still knows the guest is frozen.
	frozen atomic.Bool

	// settimeofday sets the system clock. Tests replace it so they never
	// touch the clock of the machine they run on.
	settimeofday func(tv *unix.Timeval) error
}

func newSystem() *system {
	return &system{
		opts:         defaultOptions(),
		log:          hclog.NewNullLogger(),
		settimeofday: unix.Settimeofday,
	}
}

// plugin builds the command plugin around s. Tests call the returned
// plugin's Configure and Run directly: that is the data plane's code path.
func (s *system) plugin() *sdk.CommandPlugin {
	var cmds []sdk.Command
	for _, group := range [][]sdk.Command{
		s.powerCommands(),
		s.fsfreezeCommands(),
		s.fstrimCommands(),
		s.timeCommands(),
		s.infoCommands(),
		s.usersCommands(),
		s.statsCommands(),
		s.vcpuCommands(),
		s.memoryCommands(),
		s.fsinfoCommands(),
		s.disksCommands(),
		s.sshCommands(),
		s.passwordCommands(),
	} {
		cmds = append(cmds, group...)
	}
	for i := range cmds {
		if !cmds[i].AllowedWhileFrozen {
			cmds[i].Handler = s.refuseWhileFrozen(cmds[i].Name, cmds[i].Handler)
		}
	}
	return &sdk.CommandPlugin{
		Name:      "cmd-system",
		Version:   version,
		Commands:  cmds,
		Configure: s.configure,
		Shutdown:  s.thawOnStop,
		Busy:      s.busy,
	}
}

// refuseWhileFrozen backs up the parser's own check: after a restart the
// parser may not know the filesystems are frozen, and a command that writes to
// a frozen filesystem would hang this plugin. The text and class are qemu-ga's.
func (s *system) refuseWhileFrozen(name string, h func(context.Context, *sdk.Call) (any, error)) func(context.Context, *sdk.Call) (any, error) {
	return func(ctx context.Context, call *sdk.Call) (any, error) {
		if s.frozen.Load() {
			return nil, sdk.ErrorWithClass(sdk.ClassCommandNotFound,
				"Command %s has been disabled: the agent is in frozen state", name)
		}
		return h(ctx, call)
	}
}

func main() {
	sdk.ServeCommands(newSystem().plugin())
}

// busy keeps the plugin from leaving while idle (sdk.CommandPlugin.Busy)
// while the guest is frozen: stopping would thaw it (thawOnStop).
func (s *system) busy() string {
	if s.frozen.Load() {
		return "filesystems frozen"
	}
	return ""
}

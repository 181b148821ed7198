// Command guest-agent-cmd-exec serves qemu-ga's guest-exec and
// guest-exec-status, and negotiator's user-defined commands (list-commands,
// execute). Children are started directly (no shell), each in its own
// process group, and reaped by a goroutine blocked in wait(2): no SIGCHLD
// handler, no polling.
package main

import (
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// version is set by the build (-X main.version).
var version = "dev"

func main() {
	p, ex := newPlugin()
	stopOnSigterm(p, ex)
	sdk.ServeCommands(p)
	ex.shutdown()
}

// stopOnSigterm makes SIGTERM (the supervisor stopping us) go through the
// same shutdown as the end of ServeCommands (the supervisor's graceful
// Shutdown call): it kills the children's process groups only when
// kill_on_exit is set; by default they outlive the plugin as they outlive
// qemu-ga (see README.md).
func stopOnSigterm(p *sdk.CommandPlugin, ex *execer) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	go func() {
		s := <-sigs
		p.Logger.Info("signal received; stopping", "signal", s.String())
		ex.shutdown()
		os.Exit(0)
	}()
}

// newPlugin builds the plugin and the exec state behind it. The state is
// configured by the plugin's Configure hook; until then it runs with the
// defaults.
func newPlugin() (*sdk.CommandPlugin, *execer) {
	p := &sdk.CommandPlugin{Name: "cmd-exec", Version: version}
	p.Logger = sdk.NewLogger(p.Name)
	ex := newExecer(p.Logger, defaultOptions())
	p.Configure = func(cfg sdk.Config) error {
		opts, err := decodeOptions(cfg.Options)
		if err != nil {
			return err
		}
		if cfg.Logger != nil {
			ex.log = cfg.Logger
		}
		ex.setOptions(opts)
		if len(opts.AllowedPaths) > 0 {
			ex.log.Info("guest-exec confined", "allowed_paths", strings.Join(describeAllowed(opts.AllowedPaths), ", "),
				"allowed_env", strings.Join(*opts.AllowedEnv, ","))
		} else if opts.AllowedEnv != nil {
			ex.log.Info("guest-exec environment confined", "allowed_env", strings.Join(*opts.AllowedEnv, ","))
		}
		return nil
	}
	p.Commands = append(append(execCommands(ex), streamCommands(ex)...), negotiatorCommands(ex)...)
	p.Busy = ex.busy
	return p, ex
}

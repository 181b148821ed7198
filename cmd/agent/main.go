// Command guest-agent is the supervisor of the guest agent: it launches the
// exchange, parser and command plugins and wires them into channels. Its
// flags are qemu-ga's, so it drops in where qemu-ga runs.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	"github.com/guest-agent/guest-agent/cmd/agent/internal/journal"
	"github.com/guest-agent/guest-agent/cmd/agent/internal/supervisor"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/zclconf/go-cty/cty"
	"golang.org/x/sys/unix"
)

// version is set by the build (-X main.version).
var version = "dev"

// flags are qemu-ga's, plus the plugin directory.
type flags struct {
	method, path, dialect, stateDir, runtimeDir, pidFile, logFile, configPath, fsfreezeHook string
	blockRPCs, allowRPCs                                                                    []string
	pluginDirs                                                                              []string
	verbose, showVersion, dumpConf, retryPath                                               bool
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "guest-agent:", err)
		os.Exit(1)
	}
}

// extraCommands are added to the root command by files built with tags
// (docs.go: the hidden docs command of make doc).
var extraCommands []func() *cobra.Command

func newRootCmd() *cobra.Command {
	f := &flags{}
	root := &cobra.Command{
		Use:   "guest-agent",
		Short: "Guest agent for virtual machines (qemu-ga compatible), built of plugins",
		Long: `guest-agent answers a host's requests inside a virtual machine: a drop-in for
QEMU's qemu-ga (libvirt, Proxmox, OpenStack on KVM) and for OpenStack's XenStore
nova-agent. It is a supervisor that launches plugins, each its own process: an
exchange owns the transport (virtio-serial, serial, unix or vsock socket,
XenStore), a parser speaks the dialect (qga, nova) and command plugins serve the
commands. Its flags are qemu-ga's; without any it serves the host's
virtio-serial port /dev/virtio-ports/org.qemu.guest_agent.0.

Plugins are the guest-agent-* binaries found in --plugin-dir, beside
guest-agent, and in plugin_dirs of the configuration (default
/usr/lib/guest-agent/plugins and /etc/guest-agent/plugins.d), each with its
manifest (guest-agent manifest). These directories are followed while the
agent runs: a plugin installed, removed or upgraded there is taken up,
dropped or restarted without restarting the agent. The configuration file
/etc/guest-agent/agent.hcl (agent.hcl(5)) declares channels, limits and plugin
options; flags win over it. State lives in /var/lib/guest-agent, plugin sockets
and the frozen flags in /run/guest-agent.

Under systemd (guest-agent.service, started by udev when the port appears) the
log goes to the journal with each line's priority and without timestamps of
its own.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          func(cmd *cobra.Command, _ []string) error { return runAgent(cmd, f) },
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&f.method, "method", "m", "", "transport method: virtio-serial, isa-serial, unix-listen, vsock-listen, xenstore (default virtio-serial)")
	pf.StringVarP(&f.path, "path", "p", "", "device or socket path (default /dev/virtio-ports/org.qemu.guest_agent.0)")
	pf.StringVar(&f.dialect, "dialect", "", "dialect of the flags' channel: qga (default; nova for xenstore), negotiator (-m virtio-serial -p negotiator-host-to-guest.0)")
	pf.StringVarP(&f.stateDir, "statedir", "t", "", "state directory (default /var/lib/guest-agent)")
	pf.StringVar(&f.runtimeDir, "runtime-dir", "", "runtime directory: plugin sockets, frozen flags (default /run/guest-agent; keep it on a tmpfs)")
	pf.StringVarP(&f.pidFile, "pidfile", "f", "", "pid file")
	pf.StringVarP(&f.logFile, "logfile", "l", "", "log file (default stderr)")
	pf.StringVarP(&f.configPath, "config", "c", config.DefaultPath, "configuration file (HCL)")
	pf.StringVarP(&f.fsfreezeHook, "fsfreeze-hook", "F", "", "script run around fsfreeze with 'freeze'/'thaw'")
	pf.StringSliceVarP(&f.blockRPCs, "block-rpcs", "b", nil, "comma-separated commands to disable ('help' lists them)")
	pf.StringSliceVarP(&f.allowRPCs, "allow-rpcs", "a", nil, "comma-separated commands to allow, all others disabled ('help' lists them)")
	pf.StringSliceVar(&f.pluginDirs, "plugin-dir", nil, "directory searched first for guest-agent-* plugins (repeatable)")
	pf.BoolVarP(&f.verbose, "verbose", "v", false, "log extra debugging information")
	pf.BoolVarP(&f.showVersion, "version", "V", false, "print version information and exit")
	pf.BoolVarP(&f.dumpConf, "dump-conf", "D", false, "dump the effective configuration and exit")
	pf.BoolVarP(&f.retryPath, "retry-path", "r", false, "wait for the channel device to appear instead of failing")

	root.AddCommand(&cobra.Command{
		Use: "run", Short: "Run the agent (default)",
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd, f) },
	})
	root.AddCommand(&cobra.Command{
		Use: "plugins", Short: "List discovered plugins, their versions and what they serve",
		RunE: func(cmd *cobra.Command, _ []string) error { return listPlugins(cmd.Context(), cmd.OutOrStdout(), f) },
	})
	root.AddCommand(newManifestCmd())
	root.AddCommand(newHostCmd())
	root.AddCommand(newCallCmd(f))
	cfgCmd := &cobra.Command{Use: "config", Short: "Configuration tools"}
	cfgCmd.AddCommand(&cobra.Command{
		Use: "dump", Short: "Print the effective configuration (file and flags merged)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := effectiveConfig(f)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(cfg.Dump())
			return err
		},
	})
	root.AddCommand(cfgCmd)
	for _, add := range extraCommands {
		root.AddCommand(add())
	}
	return root
}

// effectiveConfig merges the configuration file and the flags; flags win.
func effectiveConfig(f *flags) (*config.Agent, error) {
	cfg, err := config.Load(f.configPath, f.configPath != config.DefaultPath)
	if err != nil {
		return nil, err
	}
	if f.stateDir != "" {
		cfg.StateDir = f.stateDir
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/var/lib/guest-agent"
	}
	if f.runtimeDir != "" {
		cfg.RuntimeDir = f.runtimeDir
	}
	if cfg.RuntimeDir == "" {
		cfg.RuntimeDir = "/run/guest-agent"
	}
	for _, dir := range []*string{&cfg.StateDir, &cfg.RuntimeDir} {
		if abs, err := filepath.Abs(*dir); err == nil {
			*dir = abs
		}
	}
	if len(cfg.PluginDirs) == 0 {
		cfg.PluginDirs = append([]string(nil), config.DefaultPluginDirs...)
	}
	if f.pidFile != "" {
		cfg.PidFile = f.pidFile
	}
	if f.logFile != "" {
		cfg.LogFile = f.logFile
	}
	if f.verbose {
		cfg.LogLevel = "debug"
	}
	if f.method != "" || f.path != "" || f.dialect != "" || len(cfg.Channels) == 0 {
		ch := flagChannel(f)
		kept := cfg.Channels[:0]
		for _, c := range cfg.Channels {
			if c.Name != ch.Name {
				kept = append(kept, c)
			}
		}
		cfg.Channels = append(kept, ch)
	}
	cfg.ExpandCommandMonitor() // beside the channels above
	for i := range cfg.Channels {
		cfg.Channels[i].BlockRPCs = append(cfg.Channels[i].BlockRPCs, f.blockRPCs...)
		cfg.Channels[i].AllowRPCs = append(cfg.Channels[i].AllowRPCs, f.allowRPCs...)
	}
	if f.fsfreezeHook != "" {
		p := cfg.PluginByName("cmd-system")
		p.Options = config.WithOption(p.Options, "fsfreeze_hook", cty.StringVal(f.fsfreezeHook))
	}
	return cfg, cfg.Validate()
}

// flagChannel is the channel the qemu-ga style flags describe.
func flagChannel(f *flags) config.Channel {
	method := f.method
	if method == "" {
		method = "virtio-serial"
	}
	ch := config.Channel{Name: "qga", Method: method, Path: f.path, Dialect: "qga", Options: cty.NullVal(cty.DynamicPseudoType)}
	switch method {
	case "virtio-serial":
		if ch.Path == "" {
			ch.Path = "/dev/virtio-ports/org.qemu.guest_agent.0"
		}
	case "isa-serial":
		if ch.Path == "" {
			ch.Path = "/dev/ttyS0"
		}
	case "xenstore":
		ch.Name, ch.Dialect = "nova", "nova"
	}
	if f.dialect != "" {
		ch.Name, ch.Dialect = f.dialect, f.dialect
	}
	if f.retryPath {
		ch.Options = config.WithOption(ch.Options, "retry_path", cty.True)
	}
	return ch
}

// pluginDirs are searched for plugins in this order (the first holding a
// name wins) and followed while the agent runs: --plugin-dir, the directory
// of guest-agent, then plugin_dirs of the configuration.
func pluginDirs(f *flags, cfg *config.Agent) []string {
	dirs := append([]string{}, f.pluginDirs...)
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	return append(dirs, cfg.PluginDirs...)
}

func newLogger(cfg *config.Agent) (hclog.Logger, io.Closer, error) {
	closer := io.NopCloser(nil)
	if cfg.LogFile != "" {
		file, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("log file: %w", err)
		}
		return hclog.New(&hclog.LoggerOptions{Name: "guest-agent", Level: logLevel(cfg), Output: file}), file, nil
	}
	return stderrLogger(logLevel(cfg)), closer, nil
}

func logLevel(cfg *config.Agent) hclog.Level {
	level := hclog.LevelFromString(cfg.LogLevel)
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	return level
}

// stderrLogger logs to stderr; when systemd connected stderr to the journal,
// without timestamps (the journal adds its own) and with each line's
// priority in the journal's "<N>" prefix. Plugins' records reach the journal
// through this logger too (go-plugin forwards them).
func stderrLogger(level hclog.Level) hclog.Logger {
	opts := &hclog.LoggerOptions{Name: "guest-agent", Level: level, Output: os.Stderr}
	if journal.Connected(os.Stderr) {
		opts.Output, opts.DisableTime = journal.NewWriter(os.Stderr), true
	}
	return hclog.New(opts)
}

func runAgent(cmd *cobra.Command, f *flags) error {
	if f.showVersion {
		fmt.Fprintf(cmd.OutOrStdout(), "guest-agent %s (plugin protocol 1)\n", version)
		return nil
	}
	cfg, err := effectiveConfig(f)
	if err != nil {
		return err
	}
	if f.dumpConf {
		_, err := cmd.OutOrStdout().Write(cfg.Dump())
		return err
	}
	logger, closer, err := newLogger(cfg)
	if err != nil {
		return err
	}
	defer closer.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	sup := supervisor.New(supervisor.Options{Config: cfg, PluginDirs: pluginDirs(f, cfg), Version: version, Logger: logger})
	if err := sup.Prepare(); err != nil {
		return err
	}
	if cfg.PidFile != "" {
		release, err := writePidFile(cfg.PidFile)
		if err != nil {
			return err
		}
		defer release()
	}
	if err := sup.Load(ctx, isHelp(f.blockRPCs) || isHelp(f.allowRPCs)); err != nil {
		return err
	}
	defer sup.Shutdown()
	if isHelp(f.blockRPCs) || isHelp(f.allowRPCs) {
		fmt.Fprintln(cmd.OutOrStdout(), strings.Join(sup.Commands(), "\n"))
		return nil
	}
	if cfg.HostRelay != nil && cfg.HostRelay.Enabled {
		stopRelay, err := startHostRelay(ctx, cfg.HostRelay, logger)
		if err != nil {
			return err
		}
		defer stopRelay()
	}
	err = sup.Run(ctx)
	if err != nil && ctx.Err() != nil {
		// SIGTERM during start-up: what failed was cut short on purpose.
		logger.Info("stopped during start-up", "interrupted", err)
		err = nil
	}
	logger.Info("agent stopped")
	return err
}

func isHelp(list []string) bool {
	for _, v := range list {
		if v == "help" || v == "?" {
			return true
		}
	}
	return false
}

// writePidFile writes and locks the pid file so two agents never share a
// state directory; the lock dies with the process.
func writePidFile(path string) (func(), error) {
	file, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pid file: %w", err)
	}
	if err := unix.Flock(int(file.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		file.Close()
		return nil, fmt.Errorf("pid file %s is locked: another agent is running", path)
	}
	if err := file.Truncate(0); err == nil {
		fmt.Fprintf(file, "%d\n", os.Getpid())
	}
	return func() { os.Remove(path); file.Close() }, nil
}

func listPlugins(ctx context.Context, w io.Writer, f *flags) error {
	cfg, err := effectiveConfig(f)
	if err != nil {
		return err
	}
	logger := stderrLogger(hclog.Warn)
	sup := supervisor.New(supervisor.Options{Config: cfg, PluginDirs: pluginDirs(f, cfg), Version: version, Logger: logger})
	if err := sup.Prepare(); err != nil {
		return err
	}
	if err := sup.Load(ctx, true); err != nil {
		return err
	}
	defer sup.Shutdown()
	for _, p := range sup.Plugins() {
		kind := strings.ToLower(strings.TrimPrefix(p.Info.Kind.String(), "KIND_"))
		fmt.Fprintf(w, "%s %s (%s) %s\n", p.Name, p.Info.Version, kind, p.Path)
		for _, c := range p.Info.Commands {
			fmt.Fprintf(w, "  command %s\n", c.Name)
		}
		for _, d := range p.Info.Dialects {
			fmt.Fprintf(w, "  dialect %s\n", d)
		}
		for _, m := range p.Info.Methods {
			fmt.Fprintf(w, "  method %s\n", m)
		}
	}
	return nil
}

// Package supervisor runs the agent: it discovers plugin binaries, launches
// them with go-plugin, keeps the command registry, wires channels (an
// exchange handing sessions to a parser that routes commands to command
// plugins), restarts crashed plugins with backoff and stops everything on
// shutdown. It is the control plane: requests do not pass through it.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/procmem"
	"github.com/guest-agent/guest-agent/shared/rpcplugin"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
)

// Options configure a Supervisor.
type Options struct {
	Config     *config.Agent
	PluginDirs []string // searched in order
	Version    string
	Logger     hclog.Logger
}

// Supervisor is one running agent.
type Supervisor struct {
	opts     Options
	logger   hclog.Logger
	launcher *launcher
	stateDir string
	// runtimeDir (a tmpfs) holds sockDir and the plugins' runtime
	// directories: nothing the agent needs while frozen lies on a
	// filesystem the guest can freeze.
	runtimeDir string
	sockDir    string
	lazy       bool
	// backoffMax caps the restart delay of a crashing plugin.
	backoffMax time.Duration

	mu        sync.Mutex
	plugins   map[string]*managed
	routes    []*pb.Route
	channels  []config.Channel
	parserOf  map[string]*managed // channel → parser
	exchOf    map[string]*managed // channel → exchange
	stopping  bool
	ctx       context.Context
	reopening sync.Mutex
	inboxes   map[string]string // channel → parser inbox socket
	// cache remembers plugin Info by binary for plugins without a valid
	// manifest; deferred are the command plugins to learn in the
	// background (neither manifest nor cache entry).
	cache    *infoCache
	deferred []*managed
	// routesPush serialises giving new routes to the parsers.
	routesPush sync.Mutex
	// handedOver marks channels whose exchange gave its transport to the
	// parser (a listening socket): such an exchange is stopped while idle.
	handedOver map[string]bool
	// nextSeq orders plugins for the registry (see buildRegistry);
	// nextInstance numbers the plugins taken up at run time (see
	// dataSocket). Both under mu.
	nextSeq      int
	nextInstance int
	// refused holds the refusals of the last registry, each logged once.
	refused map[string]bool
	// draining are plugins whose binary was removed or replaced, finishing
	// their requests in flight (hotplug.go).
	draining map[*running]*managed
	// failed remembers binaries that could not be loaded, so a change in
	// their directory does not try them again (a new file is tried).
	failed map[string]fileID
}

// managed is one plugin under supervision.
//
// Lock order: m.mu before s.mu, never the other way round. info is written
// under both (checkBelievedInfo): read it under either.
type managed struct {
	found Found
	info  *pb.InfoResponse
	cfg   *config.Plugin
	// believed names where info came from without asking this binary
	// ("manifest", "cache"); its first start checks it (under mu).
	believed string

	// seq: a command declared by two plugins stays with the lower seq
	// (the one loaded first); instance numbers the plugin's data plane
	// socket (dataSocket). Neither changes.
	seq      int
	instance int

	mu        sync.Mutex
	run       *running
	crashes   []time.Time
	nextStart time.Time
	// dismissed: its binary was removed or replaced; never started again.
	dismissed bool
	// warned names the change of a channel plugin's binary last logged.
	warned string
}

// New prepares a supervisor; Run starts it.
func New(opts Options) *Supervisor {
	opts.PluginDirs = cleanDirs(opts.PluginDirs)
	lazy := true
	if opts.Config.LazyStart != nil {
		lazy = *opts.Config.LazyStart
	}
	backoffMax, _ := opts.Config.BackoffMax() // validated with the config
	return &Supervisor{
		backoffMax: backoffMax,
		opts:       opts,
		logger:     opts.Logger,
		launcher:   newLauncher(),
		stateDir:   opts.Config.StateDir,
		runtimeDir: opts.Config.RuntimeDir,
		sockDir:    filepath.Join(opts.Config.RuntimeDir, "s"),
		lazy:       lazy,
		plugins:    map[string]*managed{},
		parserOf:   map[string]*managed{},
		exchOf:     map[string]*managed{},
		inboxes:    map[string]string{},
		handedOver: map[string]bool{},
		refused:    map[string]bool{},
		draining:   map[*running]*managed{},
		failed:     map[string]fileID{},
	}
}

// cleanDirs makes dirs absolute and clean, without empty entries or
// repetitions, so that events of the directory watch name them as they are.
func cleanDirs(dirs []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if abs, err := filepath.Abs(d); err == nil {
			d = abs
		}
		d = filepath.Clean(d)
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}

// Prepare creates the state and runtime directories and sweeps sockets
// left by a previous run that was killed.
func (s *Supervisor) Prepare() error {
	if err := os.MkdirAll(s.stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if err := os.MkdirAll(s.runtimeDir, 0o700); err != nil {
		return fmt.Errorf("runtime directory: %w", err)
	}
	if err := os.RemoveAll(s.sockDir); err != nil {
		return fmt.Errorf("sweep stale plugin sockets: %w", err)
	}
	if err := os.MkdirAll(s.sockDir, 0o700); err != nil {
		return fmt.Errorf("plugin socket directory: %w", err)
	}
	// Unix socket paths are capped at 108 bytes.
	// go-plugin's sockets: <sockDir>/plugin-dir<n>/plugin<n>.
	if longest := len(filepath.Join(s.sockDir, "plugin-dir0123456789", "plugin0123456789")); longest > 107 {
		return fmt.Errorf("runtime directory %s is too long for unix socket paths (limit 108 bytes)", s.runtimeDir)
	}
	return nil
}

// Load discovers plugins and learns what each serves: from the manifest
// beside its binary when that manifest describes the binary (no launch),
// else from the info cache, else by launching it. It keeps running the ones
// it launched only if keepAfterInfo says so.
//
// Unless waitAll is set, plugins with neither a manifest nor a cache entry
// are learnt in the background once the channels serve (see learnDeferred)
// when the plugins known already have what every channel needs: a first boot
// answers its first ping as soon as a warm one does. A plugin's kind is what
// its Info says, whatever its file is called.
func (s *Supervisor) Load(ctx context.Context, waitAll bool) error {
	found, err := Discover(s.opts.PluginDirs)
	if err != nil {
		return err
	}
	cache := loadInfoCache(filepath.Join(s.stateDir, "plugin-info.json"))
	s.cache = cache
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	var unknown []*managed
	for _, f := range found {
		m := s.newManaged(f)
		if m == nil {
			continue
		}
		for _, sh := range f.Shadowed {
			s.logger.Info("plugin shadowed by an earlier directory", "plugin", f.Name, "used", f.Path, "ignored", sh)
		}
		s.plugins[f.Name] = m
		if m.info, m.believed = s.knownInfo(m); m.info == nil {
			unknown = append(unknown, m)
		}
	}
	if !waitAll && s.lazy && s.channelsServed() {
		// What the others are (a plugin's kind is what its Info says) is
		// learnt once the channels serve: a first boot answers its first
		// ping as soon as a warm one does.
		for _, m := range unknown {
			delete(s.plugins, m.found.Name)
		}
		s.deferred, unknown = unknown, nil
	}
	for _, m := range unknown {
		f := m.found
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, info, err := s.ask(ctx, m)
			m.info = info
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("plugin %s: %w", f.Name, err))
				s.mu.Lock()
				s.failed[f.Name] = f.file
				s.mu.Unlock()
				return
			}
			cache.put(f, m.info)
			if !s.keepAfterInfo(m.info) {
				s.asked(m, r) // started for that only
				return
			}
			s.logger.Info("plugin started", "plugin", f.Name, "pid", r.pid, "kind", kindName(m.info.Kind))
			m.mu.Lock()
			m.run = r
			m.mu.Unlock()
			s.watch(m, r)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		s.logger.Error("plugin not loaded", "error", err)
	}
	for name, m := range s.plugins {
		if m.info == nil {
			delete(s.plugins, name)
		}
	}
	cache.saveInBackground(s.logger)
	s.mu.Lock()
	s.buildRegistry()
	s.mu.Unlock()
	return nil
}

// newManaged prepares the plugin f for supervision, nil when the
// configuration disables it.
func (s *Supervisor) newManaged(f Found) *managed {
	pcfg := s.opts.Config.PluginByName(f.Name)
	if pcfg.Disabled {
		s.logger.Info("plugin disabled by configuration", "plugin", f.Name)
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextSeq++
	return &managed{found: f, cfg: pcfg, seq: s.nextSeq}
}

// knownInfo is what m serves as known without starting it: from the
// manifest beside its binary when that manifest describes it, else from the
// info cache (never for a pinned plugin). nil: it must be asked.
func (s *Supervisor) knownInfo(m *managed) (*pb.InfoResponse, string) {
	info, err := loadManifest(m.found.Path, m.cfg.Checksum)
	if err == nil {
		return info, "manifest"
	}
	if !errors.Is(err, errNoManifest) {
		s.logger.Warn("plugin manifest ignored: learning what the plugin serves by starting it", "plugin", m.found.Name, "reason", err)
	}
	if m.cfg.Checksum == "" {
		if info := s.cache.get(m.found); info != nil {
			return info, "cache"
		}
	}
	return nil, ""
}

// channelsServed tells whether the plugins known so far have a parser and
// an exchange for every configured channel.
func (s *Supervisor) channelsServed() bool {
	for _, ch := range s.opts.Config.Channels {
		if s.findKind(pb.Kind_KIND_PARSER, func(i *pb.InfoResponse) bool { return contains(i.Dialects, ch.Dialect) }) == nil ||
			s.findKind(pb.Kind_KIND_EXCHANGE, func(i *pb.InfoResponse) bool { return contains(i.Methods, ch.Method) }) == nil {
			return false
		}
	}
	return true
}

// learnDeferred launches the plugins Load left for later, learns what they
// serve, stops them, and gives the parsers the new routes.
func (s *Supervisor) learnDeferred(ctx context.Context) {
	var wg sync.WaitGroup
	for _, m := range s.deferred {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, info, err := s.ask(ctx, m)
			if err == nil {
				m.info = info
				s.asked(m, r)
			}
			if err != nil {
				s.logger.Error("plugin not loaded", "plugin", m.found.Name, "error", err)
				s.mu.Lock()
				s.failed[m.found.Name] = m.found.file
				s.mu.Unlock()
				return
			}
			s.cache.put(m.found, m.info)
			s.mu.Lock()
			s.plugins[m.found.Name] = m
			s.mu.Unlock()
		}()
	}
	wg.Wait()
	s.mu.Lock()
	s.deferred = nil
	s.buildRegistry()
	s.mu.Unlock()
	s.cache.saveInBackground(s.logger)
	s.pushRoutes(ctx)
	s.logger.Info("command plugins learnt", "commands", len(s.routes)+len(rpcplugin.CoreCommands()))
}

func levelName(l hclog.Logger) string {
	switch {
	case l.IsTrace():
		return "trace"
	case l.IsDebug():
		return "debug"
	case l.IsInfo():
		return "info"
	case l.IsWarn():
		return "warn"
	}
	return "error"
}

// keepAfterInfo tells whether a plugin launched to learn its Info should stay
// up: the parsers and exchanges the channels need (Run configures them
// next). Anything else would cost memory for nothing. A command plugin is
// configured only as ensureRunning starts it (with lazy start off, Run
// starts them all): kept unconfigured, it would have no data plane.
func (s *Supervisor) keepAfterInfo(info *pb.InfoResponse) bool {
	switch info.Kind {
	case pb.Kind_KIND_PARSER:
		for _, ch := range s.opts.Config.Channels {
			if contains(info.Dialects, ch.Dialect) {
				return true
			}
		}
	case pb.Kind_KIND_EXCHANGE:
		for _, ch := range s.opts.Config.Channels {
			if contains(info.Methods, ch.Method) {
				return true
			}
		}
	}
	return false
}

// launch starts m to serve, and logs one line saying so.
func (s *Supervisor) launch(m *managed) (*running, error) {
	r, err := s.spawn(m)
	if err != nil {
		return nil, err
	}
	s.logger.Info("plugin started", "plugin", m.found.Name, "pid", r.pid, "kind", kindName(m.info.Kind))
	return r, nil
}

// spawn starts m's binary.
func (s *Supervisor) spawn(m *managed) (*running, error) {
	return s.launcher.launch(launchSpec{
		path:     m.found.Path,
		name:     m.found.Name,
		checksum: m.cfg.Checksum,
		sockDir:  s.sockDir,
		logLevel: levelName(s.logger),
		logger:   s.logger,
		tls:      s.opts.Config.PluginTLS,
	})
}

// ask starts m to ask what it serves (Info). The caller keeps the instance
// running, or lets it go with asked. An instance that does not answer is
// stopped.
func (s *Supervisor) ask(ctx context.Context, m *managed) (*running, *pb.InfoResponse, error) {
	r, err := s.spawn(m)
	if err != nil {
		return nil, nil, err
	}
	info, err := r.info(ctx)
	if err != nil {
		r.stop()
		s.logger.Debug("plugin stopped", "plugin", m.found.Name, "pid", r.pid, "reason", "Info failed")
		return nil, nil, fmt.Errorf("info: %w", err)
	}
	return r, info, nil
}

// asked stops an instance started only to ask what it serves. The start and
// the stop are one event: one line.
func (s *Supervisor) asked(m *managed, r *running) {
	r.stop()
	s.logger.Info("plugin asked what it serves: started once, then stopped", "plugin", m.found.Name, "pid", r.pid,
		"kind", kindName(m.info.Kind), "version", m.info.Version, "commands", len(m.info.Commands))
}

// stopPlugin stops a plugin on purpose and logs one line saying why.
func (s *Supervisor) stopPlugin(m *managed, r *running, why string) {
	r.stop()
	s.logger.Info("plugin stopped", "plugin", m.found.Name, "pid", r.pid, "reason", why)
}

func kindName(k pb.Kind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "KIND_"))
}

// buildRegistry maps every command to one plugin (under s.mu). A command
// declared twice stays with the plugin loaded first (at start, the first by
// name; a plugin taken up later never takes a command from one that serves
// it); the other is refused with a log line, once.
func (s *Supervisor) buildRegistry() {
	plugins := make([]*managed, 0, len(s.plugins))
	for _, m := range s.plugins {
		plugins = append(plugins, m)
	}
	sort.Slice(plugins, func(i, j int) bool { return plugins[i].seq < plugins[j].seq })
	owner := map[string]string{}
	refused := map[string]bool{}
	refuse := func(msg, command, plugin string, args ...any) {
		key := msg + "\x00" + command + "\x00" + plugin
		refused[key] = true
		if !s.refused[key] {
			s.logger.Error(msg, append([]any{"command", command, "plugin", plugin}, args...)...)
		}
	}
	var routes []*pb.Route
	for _, m := range plugins {
		n := m.found.Name
		if m.info.Kind != pb.Kind_KIND_COMMAND {
			continue
		}
		for _, c := range m.info.Commands {
			if rpcplugin.IsCoreCommand(c.Name) {
				refuse("command refused: it is a core command of the agent", c.Name, n)
				continue
			}
			if o, dup := owner[c.Name]; dup {
				refuse("duplicate command refused", c.Name, n, "served_by", o)
				continue
			}
			owner[c.Name] = n
			routes = append(routes, &pb.Route{
				Command: c.Name, Plugin: n, Spec: c, Enabled: true,
				DataplaneSocket: s.dataSocket(m),
			})
		}
	}
	s.routes, s.refused = routes, refused
}

// dataSocket is where m's data plane listens. A plugin taken up at run time
// gets a path no earlier instance of its name had, so parsers tell the new
// binary from the old one still finishing its requests (drain.go).
func (s *Supervisor) dataSocket(m *managed) string {
	if m.instance == 0 {
		return filepath.Join(s.sockDir, m.found.Name+".sock")
	}
	return filepath.Join(s.sockDir, fmt.Sprintf("%s.%d.sock", m.found.Name, m.instance))
}

// Plugins returns what Load found, for `guest-agent plugins`.
func (s *Supervisor) Plugins() []PluginReport {
	var out []PluginReport
	for _, m := range s.plugins {
		out = append(out, PluginReport{Name: m.found.Name, Path: m.found.Path, Info: m.info})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// PluginReport describes one loaded plugin.
type PluginReport struct {
	Name string
	Path string
	Info *pb.InfoResponse
}

// Commands lists the registry (core commands first), for -b help.
func (s *Supervisor) Commands() []string {
	out := rpcplugin.CoreCommands()
	sort.Strings(out)
	core := len(out)
	for _, r := range s.routes {
		out = append(out, r.Command)
	}
	sort.Strings(out[core:])
	return out
}

// Run serves the configured channels until ctx ends, then stops every
// plugin.
func (s *Supervisor) Run(ctx context.Context) error {
	s.ctx = ctx
	defer s.stopAll()
	if len(s.opts.Config.Channels) == 0 {
		return errors.New("no channel configured")
	}
	s.channels = s.opts.Config.Channels
	for _, ch := range s.channels {
		parser := s.findKind(pb.Kind_KIND_PARSER, func(i *pb.InfoResponse) bool { return contains(i.Dialects, ch.Dialect) })
		if parser == nil {
			return fmt.Errorf("channel %s: no parser plugin serves dialect %q", ch.Name, ch.Dialect)
		}
		exch := s.findKind(pb.Kind_KIND_EXCHANGE, func(i *pb.InfoResponse) bool { return contains(i.Methods, ch.Method) })
		if exch == nil {
			return fmt.Errorf("channel %s: no exchange plugin serves method %q", ch.Name, ch.Method)
		}
		s.parserOf[ch.Name], s.exchOf[ch.Name] = parser, exch
	}
	// Parsers first: exchanges hand sessions to their inboxes.
	var wg sync.WaitGroup
	errCh := make(chan error, len(s.channels)*2)
	for _, p := range s.uniq(s.parserOf) {
		wg.Add(1)
		go func() { defer wg.Done(); errCh <- s.startParser(ctx, p) }()
	}
	for _, e := range s.uniq(s.exchOf) {
		wg.Add(1)
		go func() { defer wg.Done(); _, err := s.ensureRunning(ctx, e); errCh <- err }()
	}
	wg.Wait()
	close(errCh)
	for err := range errCh {
		if err != nil {
			return err
		}
	}
	for _, ch := range s.channels {
		if err := s.openChannel(ctx, ch); err != nil {
			return err
		}
	}
	s.stopIdleExchanges()
	go s.followPluginDirs(ctx)
	if !s.lazy {
		for _, m := range s.plugins {
			if s.kindOf(m) == pb.Kind_KIND_COMMAND {
				if _, err := s.ensureRunning(ctx, m); err != nil {
					s.logger.Error("command plugin not started", "plugin", m.found.Name, "error", err)
				}
			}
		}
	}
	s.logger.Info("agent ready", "channels", len(s.channels), "plugins", len(s.plugins), "commands", len(s.routes)+len(rpcplugin.CoreCommands()))
	// Start-up garbage (TLS certificates, plugin handshakes) and the pages
	// of the binary start-up brought in go back to the system once, now,
	// rather than held while the agent idles (after the line above: ready
	// is ready, and plugins learnt in the background log after it).
	procmem.ReturnIdle()
	<-ctx.Done()
	return nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func (s *Supervisor) findKind(kind pb.Kind, match func(*pb.InfoResponse) bool) *managed {
	names := make([]string, 0, len(s.plugins))
	for n := range s.plugins {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		m := s.plugins[n]
		if m.info != nil && m.info.Kind == kind && match(m.info) {
			return m
		}
	}
	return nil
}

func (s *Supervisor) uniq(by map[string]*managed) []*managed {
	seen := map[*managed]bool{}
	var out []*managed
	for _, m := range by {
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	return out
}

// ensureRunning starts m if it is not running (honouring the restart
// backoff) and configures it when it is a command plugin.
func (s *Supervisor) ensureRunning(ctx context.Context, m *managed) (*running, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dismissed {
		return nil, fmt.Errorf("plugin %s: its binary was removed or replaced", m.found.Name)
	}
	if m.run != nil {
		select {
		case <-m.run.exited:
			m.run = nil
		default:
			return m.run, nil
		}
	}
	if wait := time.Until(m.nextStart); wait > 0 {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r, err := s.launch(m)
	if err != nil {
		s.noteCrash(m)
		return nil, err
	}
	if m.believed != "" {
		s.checkBelievedInfo(ctx, m, r)
	}
	if m.info.Kind == pb.Kind_KIND_COMMAND {
		opts, err := config.OptionsJSON(m.cfg.Options)
		if err == nil {
			_, err = r.clients.Command.Configure(ctx, &pb.ConfigureCommandRequest{
				OptionsJson:     opts,
				StateDir:        filepath.Join(s.stateDir, "plugins", m.found.Name),
				RuntimeDir:      filepath.Join(s.runtimeDir, "plugins", m.found.Name),
				DataplaneSocket: s.dataSocket(m),
			})
		}
		if err != nil {
			s.stopPlugin(m, r, "configure failed")
			s.noteCrash(m)
			return nil, fmt.Errorf("configure plugin %s: %w", m.found.Name, err)
		}
	}
	m.run = r
	s.watch(m, r)
	return r, nil
}

// noteCrash records a failure and sets when the next start may happen: the
// first three within 30 seconds restart at once, then the delay doubles from
// 200 ms up to restart_backoff_max (Nomad's restart policy, in short).
func (s *Supervisor) noteCrash(m *managed) {
	now := time.Now()
	recent := m.crashes[:0]
	for _, t := range m.crashes {
		if now.Sub(t) < 30*time.Second {
			recent = append(recent, t)
		}
	}
	m.crashes = append(recent, now)
	m.nextStart = now.Add(restartDelay(len(m.crashes), s.backoffMax))
}

// restartDelay is the wait before the next start after n recent crashes.
func restartDelay(n int, ceiling time.Duration) time.Duration {
	if n <= 3 {
		return 0
	}
	return min(200*time.Millisecond<<min(n-4, 8), ceiling)
}

// watch reacts to the end of a plugin process.
func (s *Supervisor) watch(m *managed, r *running) {
	go func() {
		<-r.exited
		s.mu.Lock()
		stopping := s.stopping
		s.mu.Unlock()
		m.mu.Lock()
		current := m.run == r
		if current {
			m.run = nil
		}
		if !stopping && current {
			s.noteCrash(m)
		}
		nextStart := m.nextStart
		m.mu.Unlock()
		if stopping || !current {
			return // stopped on purpose: stop() cleans up
		}
		// go-plugin's side of a plugin that died: its connection, broker
		// and socket directory; it also reaps the process.
		r.client.Kill()
		kind := s.kindOf(m)
		restart := "now"
		if kind == pb.Kind_KIND_COMMAND && s.lazy {
			restart = "on its next command"
		} else if wait := time.Until(nextStart); wait > 0 {
			restart = "in " + wait.Round(time.Millisecond).String() + " (crashing repeatedly)"
		}
		s.logger.Error("plugin exited unexpectedly", "plugin", m.found.Name, "pid", r.pid,
			"reason", r.exitStatus(), "restart", restart)
		switch kind {
		case pb.Kind_KIND_COMMAND:
			if s.lazy {
				return // restarted by the next command that needs it
			}
			if _, err := s.ensureRunning(s.ctx, m); err != nil {
				s.logger.Error("plugin restart failed", "plugin", m.found.Name, "error", err)
			}
		case pb.Kind_KIND_PARSER:
			s.recoverChannels(m, nil)
		case pb.Kind_KIND_EXCHANGE:
			s.recoverChannels(nil, m)
		}
	}()
}

// recoverChannels restarts a parser or an exchange and reopens the channels
// that went through it.
func (s *Supervisor) recoverChannels(parser, exch *managed) {
	s.reopening.Lock()
	defer s.reopening.Unlock()
	for s.ctx.Err() == nil {
		var err error
		if parser != nil {
			err = s.startParser(s.ctx, parser)
		} else {
			_, err = s.ensureRunning(s.ctx, exch)
		}
		if err == nil {
			for _, ch := range s.channels {
				if s.parserOf[ch.Name] == parser || s.exchOf[ch.Name] == exch {
					if err = s.openChannel(s.ctx, ch); err != nil {
						break
					}
				}
			}
		}
		if err == nil {
			s.stopIdleExchanges()
			s.logger.Info("channels restored after plugin restart")
			return
		}
		s.logger.Error("channel recovery failed; retrying", "error", err)
		select {
		case <-time.After(time.Second):
		case <-s.ctx.Done():
		}
	}
}

// startParser starts (or restarts) a parser and configures its channels,
// routes and the host service it calls for lazily started plugins.
func (s *Supervisor) startParser(ctx context.Context, m *managed) error {
	// No route push may reach the parser between its start and this first
	// Configure (which creates its inboxes), nor carry older routes after
	// it: a parser restarted while plugins were being learnt would wait
	// for routes already complete.
	s.routesPush.Lock()
	defer s.routesPush.Unlock()
	r, err := s.ensureRunning(ctx, m)
	if err != nil {
		return err
	}
	broker := r.clients.Broker
	hostID := broker.NextId()
	go broker.AcceptAndServe(hostID, func(opts []grpc.ServerOption) *grpc.Server {
		srv := grpc.NewServer(opts...)
		pb.RegisterHostServer(srv, &hostServer{s: s})
		return srv
	})
	resp, err := r.clients.Parser.Configure(ctx, s.parserRequest(m, hostID))
	if err != nil {
		return fmt.Errorf("configure parser %s: %w", m.found.Name, err)
	}
	s.mu.Lock()
	for _, in := range resp.Inboxes {
		s.inboxes[in.Channel] = in.Socket
	}
	s.mu.Unlock()
	return nil
}

// parserRequest is the configuration of parser m: its channels, the routes
// and the limits. hostID 0 keeps the host service it has.
func (s *Supervisor) parserRequest(m *managed, hostID uint32) *pb.ConfigureParserRequest {
	s.mu.Lock()
	routes := s.routes
	pending := len(s.deferred) > 0
	s.mu.Unlock()
	req := &pb.ConfigureParserRequest{
		Routes:        routes,
		AgentVersion:  s.opts.Version,
		StateDir:      filepath.Join(s.stateDir, "plugins", m.found.Name),
		RuntimeDir:    filepath.Join(s.runtimeDir, "plugins", m.found.Name),
		InboxDir:      s.sockDir,
		HostBrokerId:  hostID,
		Limits:        s.limits(),
		RoutesPending: pending,
	}
	for _, ch := range s.channels {
		if s.parserOf[ch.Name] == m {
			req.Channels = append(req.Channels, channelConfig(ch))
		}
	}
	return req
}

func (s *Supervisor) limits() *pb.Limits {
	l := s.opts.Config.Limits
	freezeMax, _ := l.FreezeMax() // validated with the config
	freezeMaxMs := freezeMax.Milliseconds()
	if freezeMax == 0 {
		freezeMaxMs = -1 // no limit
	}
	// Only lazily started plugins leave when idle: the next command
	// brings them back.
	idleExit, _ := s.opts.Config.IdleExit() // validated with the config
	idleExitMs := idleExit.Milliseconds()
	if idleExit == 0 || !s.lazy {
		idleExitMs = -1
	}
	if l == nil {
		return &pb.Limits{FsfreezeMaxMs: freezeMaxMs, PluginIdleExitMs: idleExitMs}
	}
	d, _ := l.Timeout()
	write, idle, _ := l.Deadlines()
	return &pb.Limits{
		MaxRequestBytes: l.MaxRequestBytes, CommandTimeoutMs: d.Milliseconds(),
		MaxSessions: l.MaxSessions, MaxInFlight: l.MaxInFlight, ReadAheadMaxBytes: l.ReadAheadMaxBytes,
		FsfreezeMaxMs:         freezeMaxMs,
		SessionMemoryMaxBytes: l.SessionMemoryMax, ChannelMemoryMaxBytes: l.ChannelMemoryMax,
		WriteTimeoutMs: msOrNone(write), RequestIdleTimeoutMs: msOrNone(idle),
		PluginIdleExitMs: idleExitMs,
	}
}

// msOrNone converts a limit for the wire: 0 stays the default, a negative
// duration stays "none".
func msOrNone(d time.Duration) int64 {
	if d < 0 {
		return -1
	}
	return d.Milliseconds()
}

func (s *Supervisor) openChannel(ctx context.Context, ch config.Channel) error {
	return s.openChannelWith(ctx, ch, false)
}

// openChannelWith opens a channel through its exchange; waitForDevice
// (a channel lost after a hand-over) returns only once the device is back.
func (s *Supervisor) openChannelWith(ctx context.Context, ch config.Channel, waitForDevice bool) error {
	exch := s.exchOf[ch.Name]
	r, err := s.ensureRunning(ctx, exch)
	if err != nil {
		return err
	}
	opts, err := config.OptionsJSON(ch.Options)
	if err != nil {
		return fmt.Errorf("channel %s: %w", ch.Name, err)
	}
	s.mu.Lock()
	inbox := s.inboxes[ch.Name]
	s.mu.Unlock()
	resp, err := r.clients.Exchange.OpenChannel(ctx, &pb.OpenChannelRequest{
		Channel: ch.Name, Method: ch.Method, Path: ch.Path, OptionsJson: opts, InboxSocket: inbox,
		WaitForDevice: waitForDevice,
	})
	if err != nil {
		return fmt.Errorf("open channel %s (%s %s): %w", ch.Name, ch.Method, ch.Path, err)
	}
	s.mu.Lock()
	s.handedOver[ch.Name] = resp.HandedOver
	s.mu.Unlock()
	s.logger.Info("channel open", "channel", ch.Name, "method", ch.Method, "path", resp.ResolvedPath, "dialect", ch.Dialect, "handed_over", resp.HandedOver)
	return nil
}

// stopIdleExchanges stops every exchange whose channels were all handed
// over to their parser: it has nothing to do until a channel must be
// reopened (after a parser restart), when it is started again.
func (s *Supervisor) stopIdleExchanges() {
	for _, m := range s.uniq(s.exchOf) {
		idle := true
		s.mu.Lock()
		for _, ch := range s.channels {
			if s.exchOf[ch.Name] == m && !s.handedOver[ch.Name] {
				idle = false
			}
		}
		s.mu.Unlock()
		if !idle {
			continue
		}
		m.mu.Lock()
		r := m.run
		m.run = nil // an intended stop, not a crash
		m.mu.Unlock()
		if r != nil {
			s.stopPlugin(m, r, "idle exchange: its channels are served by the parser")
		}
	}
}

// stopAll ends every plugin; nothing is left behind.
func (s *Supervisor) stopAll() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.mu.Lock()
	plugins := make([]*managed, 0, len(s.plugins))
	for _, m := range s.plugins {
		plugins = append(plugins, m)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range plugins {
		m.mu.Lock()
		r := m.run
		m.run = nil
		m.mu.Unlock()
		if r != nil {
			wg.Add(1)
			go func() { defer wg.Done(); s.stopPlugin(m, r, "agent stopping") }()
		}
	}
	s.mu.Lock()
	draining := s.draining
	s.draining = map[*running]*managed{}
	s.mu.Unlock()
	for r, m := range draining {
		wg.Add(1)
		go func() { defer wg.Done(); s.stopPlugin(m, r, "agent stopping (it was finishing its requests)") }()
	}
	wg.Wait()
}

// awaitExit waits for a plugin whose data plane connection broke to be
// gone: a dying process may still accept on its socket for a moment. One that
// dropped the connection but lives on is broken, and is stopped.
func (s *Supervisor) awaitExit(ctx context.Context, m *managed) {
	m.mu.Lock()
	r := m.run
	m.mu.Unlock()
	if r == nil {
		return
	}
	select {
	case <-r.exited:
	case <-time.After(2 * time.Second):
		s.logger.Warn("plugin dropped its data plane connection but still runs; restarting it", "plugin", m.found.Name, "pid", r.pid)
		r.stop()
	case <-ctx.Done():
	}
}

// hostServer lets parsers start command plugins on demand.
type hostServer struct {
	pb.UnimplementedHostServer
	s *Supervisor
}

// commandPlugin finds the command plugin a parser names.
func (h *hostServer) commandPlugin(name string) (*managed, error) {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	m := h.s.plugins[name]
	if m == nil || m.info.Kind != pb.Kind_KIND_COMMAND {
		return nil, fmt.Errorf("no command plugin %q", name)
	}
	return m, nil
}

func (h *hostServer) EnsureStarted(ctx context.Context, req *pb.EnsureStartedRequest) (*pb.EnsureStartedResponse, error) {
	m, err := h.commandPlugin(req.Plugin)
	if err != nil {
		return nil, err
	}
	if req.ConnectionLost {
		h.s.awaitExit(ctx, m)
	}
	if _, err := h.s.ensureRunning(ctx, m); err != nil {
		return nil, err
	}
	return &pb.EnsureStartedResponse{DataplaneSocket: h.s.dataSocket(m)}, nil
}

// Shutdown stops every plugin started by Load (when Run is not used).
func (s *Supervisor) Shutdown() { s.stopAll() }

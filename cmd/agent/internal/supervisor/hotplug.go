package supervisor

import (
	"context"
	"fmt"
	"sort"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/rpcplugin"
)

// Plugins are taken up and dropped while the agent runs (the Google guest
// agent's RegisterHandler/UnregisterHandler, nova-agent's registry): a
// change in a plugin directory (watch.go) makes rescan compare what the
// directories hold with the plugins under supervision.
//
//   - A new binary is learnt (manifest, cache, or started once) and its
//     commands are routed; a command another plugin serves stays with it and
//     the newcomer's is refused with a log line, as at start.
//   - A removed binary's commands are unrouted at once (nothing can start it
//     again); a running instance finishes its requests in flight (drain),
//     then exits.
//   - A replaced binary (dpkg and rpm rename the new file over the old) is
//     learnt afresh, with the checksum pin and manifest rules of a start, and
//     routed to a new instance on a new data plane socket; the old instance
//     finishes its requests in flight on its own socket and exits. A
//     channel's parser or exchange is restarted on the new binary and its
//     channels reopened (replaceChannelPlugin).

// rescan brings the plugins under supervision in line with the plugin
// directories.
func (s *Supervisor) rescan(ctx context.Context) {
	found, err := Discover(s.opts.PluginDirs)
	if err != nil {
		s.logger.Warn("plugin directories not read", "error", err)
		return
	}
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return
	}
	current := make(map[string]*managed, len(s.plugins))
	for n, m := range s.plugins {
		current[n] = m
	}
	s.mu.Unlock()

	onDisk := make(map[string]Found, len(found))
	for _, f := range found {
		onDisk[f.Name] = f
	}
	var dismissed []dismissal
	var added []*managed
	names := make([]string, 0, len(current))
	for n := range current {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		m := current[name]
		f, ok := onDisk[name]
		switch {
		case !ok:
			if s.servesChannel(m) {
				s.warnChannelPlugin(m, "removed")
				continue
			}
			dismissed = append(dismissed, dismissal{m, "its binary was removed"})
		case f.Path != m.found.Path || f.file != m.found.file:
			if s.servesChannel(m) {
				s.replaceChannelPlugin(ctx, m, f)
				continue
			}
			if n := s.takeUp(ctx, f, m); n != nil {
				added = append(added, n)
				dismissed = append(dismissed, dismissal{m, "its binary was replaced"})
			} else {
				dismissed = append(dismissed, dismissal{m, "its binary was replaced by one that was not loaded"})
			}
		}
	}
	for _, f := range found {
		if current[f.Name] != nil || s.opts.Config.PluginByName(f.Name).Disabled {
			continue
		}
		s.mu.Lock()
		failed := s.failed[f.Name] == f.file
		s.mu.Unlock()
		if failed {
			continue // logged when it failed; retried when the file changes
		}
		if n := s.takeUp(ctx, f, nil); n != nil {
			added = append(added, n)
		}
	}
	if len(dismissed) == 0 && len(added) == 0 {
		return
	}

	// Routes first: once the parsers have them, no new request reaches a
	// dismissed instance, so its drain ends.
	s.mu.Lock()
	for _, r := range dismissed {
		if s.plugins[r.m.found.Name] == r.m {
			delete(s.plugins, r.m.found.Name)
		}
	}
	for _, m := range added {
		s.plugins[m.found.Name] = m
	}
	s.buildRegistry()
	commands := len(s.routes) + len(rpcplugin.CoreCommands())
	s.mu.Unlock()
	s.cache.saveInBackground(s.logger)
	s.pushRoutes(ctx)
	for _, r := range dismissed {
		s.dismiss(r.m, r.why)
	}
	for _, m := range added {
		if !s.lazy && m.info.Kind == pb.Kind_KIND_COMMAND {
			if _, err := s.ensureRunning(ctx, m); err != nil {
				s.logger.Error("command plugin not started", "plugin", m.found.Name, "error", err)
			}
		}
	}
	s.logger.Debug("plugins changed", "added", len(added), "dropped", len(dismissed), "commands", commands)
}

type dismissal struct {
	m   *managed
	why string
}

// takeUp learns what the binary f serves and returns it as a plugin to
// route, nil when it cannot be loaded (logged). replaces is the plugin whose
// binary f replaced, if any: the new one keeps its place in the registry.
func (s *Supervisor) takeUp(ctx context.Context, f Found, replaces *managed) *managed {
	m := s.newManaged(f)
	if m == nil {
		return nil
	}
	s.mu.Lock()
	if replaces != nil {
		m.seq = replaces.seq
	}
	s.nextInstance++
	m.instance = s.nextInstance
	s.mu.Unlock()
	var err error
	if m.info, m.believed = s.knownInfo(m); m.info == nil {
		err = s.learnByStarting(ctx, m)
	}
	if err != nil {
		s.logger.Error("plugin not loaded", "plugin", f.Name, "path", f.Path, "error", err)
		s.mu.Lock()
		s.failed[f.Name] = f.file
		s.mu.Unlock()
		return nil
	}
	args := []any{"plugin", f.Name, "kind", kindName(m.info.Kind), "version", m.info.Version,
		"commands", len(m.info.Commands), "path", f.Path}
	if replaces != nil {
		s.mu.Lock()
		was := replaces.info.Version
		s.mu.Unlock()
		s.logger.Info("plugin binary replaced: new requests go to the new one", append(args, "was", was)...)
	} else {
		s.logger.Info("plugin taken up", args...)
	}
	if m.info.Kind != pb.Kind_KIND_COMMAND {
		// Channels are wired at start: a parser or exchange taken up now
		// serves the channels of the next start.
		s.logger.Info("plugin serves no channel until the agent restarts", "plugin", f.Name, "kind", kindName(m.info.Kind))
	}
	return m
}

// learnByStarting starts m once to ask what it serves, and stops it.
func (s *Supervisor) learnByStarting(ctx context.Context, m *managed) error {
	r, info, err := s.ask(ctx, m)
	if err != nil {
		return err
	}
	m.info = info
	s.asked(m, r)
	s.cache.put(m.found, m.info)
	return nil
}

// servesChannel tells whether m is the parser or the exchange of a channel.
// parserOf and exchOf are set by Run before plugins are followed.
func (s *Supervisor) servesChannel(m *managed) bool {
	for _, ch := range s.channels {
		if s.parserOf[ch.Name] == m || s.exchOf[ch.Name] == m {
			return true
		}
	}
	return false
}

// warnChannelPlugin says, once, that the binary of a channel's parser or
// exchange was removed: the channels keep the running instance.
func (s *Supervisor) warnChannelPlugin(m *managed, what string) {
	m.mu.Lock()
	warned := m.warned == what
	m.warned = what
	m.mu.Unlock()
	if !warned {
		s.logger.Warn("binary of a channel's plugin "+what+": its channels keep the instance they have until the agent restarts",
			"plugin", m.found.Name, "kind", kindName(m.info.Kind), "path", m.found.Path)
	}
}

// replaceChannelPlugin restarts a channel's parser or exchange on its new
// binary f, learnt as at start (pin, manifest), and reopens its channels:
// their sessions end, as when the plugin crashes, and hosts resynchronise.
// An exchange stopped while its parser serves its channels (a handed-over
// listener) is only told where its binary is now. A new binary that cannot
// be loaded, or does not serve the channels, leaves the running instance.
func (s *Supervisor) replaceChannelPlugin(ctx context.Context, m *managed, f Found) {
	s.mu.Lock()
	failed := s.failed[f.Name] == f.file
	s.mu.Unlock()
	if failed {
		return
	}
	probe := &managed{found: f, cfg: m.cfg}
	var err error
	if probe.info, probe.believed = s.knownInfo(probe); probe.info == nil {
		err = s.learnByStarting(ctx, probe)
	}
	if err == nil && !s.servesChannelsOf(m, probe.info) {
		err = fmt.Errorf("it does not serve the channels of the one it replaces (%s %s)", kindName(probe.info.Kind), probe.info.Version)
	}
	if err != nil {
		s.logger.Error("replaced binary of a channel's plugin not loaded: its channels keep the running instance",
			"plugin", f.Name, "path", f.Path, "error", err)
		s.mu.Lock()
		s.failed[f.Name] = f.file
		s.mu.Unlock()
		return
	}
	m.mu.Lock()
	m.found.Path, m.found.file = f.Path, f.file
	m.believed, m.warned = probe.believed, ""
	m.crashes, m.nextStart = nil, time.Time{}
	r := m.run
	m.run = nil // an intended stop, not a crash
	s.mu.Lock()
	was := m.info.Version
	m.info = probe.info
	s.mu.Unlock()
	m.mu.Unlock()
	kind := m.info.Kind
	if r == nil && kind == pb.Kind_KIND_EXCHANGE {
		s.logger.Info("plugin binary replaced: its next start uses it", "plugin", f.Name, "kind", kindName(kind),
			"version", m.info.Version, "was", was, "path", f.Path)
		return
	}
	s.logger.Info("plugin binary replaced: restarting it and reopening its channels", "plugin", f.Name, "kind", kindName(kind),
		"version", m.info.Version, "was", was, "path", f.Path)
	if r != nil {
		s.stopPlugin(m, r, "its binary was replaced")
	}
	if kind == pb.Kind_KIND_PARSER {
		s.recoverChannels(m, nil)
	} else {
		s.recoverChannels(nil, m)
	}
}

// servesChannelsOf tells whether info serves the channels m serves.
func (s *Supervisor) servesChannelsOf(m *managed, info *pb.InfoResponse) bool {
	for _, ch := range s.channels {
		if s.parserOf[ch.Name] == m && (info.Kind != pb.Kind_KIND_PARSER || !contains(info.Dialects, ch.Dialect)) {
			return false
		}
		if s.exchOf[ch.Name] == m && (info.Kind != pb.Kind_KIND_EXCHANGE || !contains(info.Methods, ch.Method)) {
			return false
		}
	}
	return true
}

// dismiss takes m out of service: never started again, and a running
// instance finishes its requests in flight, then exits (drain).
func (s *Supervisor) dismiss(m *managed, why string) {
	m.mu.Lock()
	m.dismissed = true
	r := m.run
	m.run = nil // an intended stop, not a crash
	m.mu.Unlock()
	if r == nil {
		s.logger.Info("plugin dropped", "plugin", m.found.Name, "reason", why)
		return
	}
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return // stopAll stops it
	}
	s.draining[r] = m
	s.mu.Unlock()
	go s.drain(m, r, why)
}

// drainGrace is added to the command timeout for a dismissed plugin to finish
// its requests in flight: past it, it is killed.
const drainGrace = 5 * time.Second

// drain asks a dismissed plugin to finish its requests in flight and exit
// (SIGTERM: the SDK's command plugins stop taking connections, finish what
// they run, and exit), and stops it if it has not within the command
// timeout.
func (s *Supervisor) drain(m *managed, r *running, why string) {
	start := time.Now()
	timeout, _ := s.opts.Config.Limits.Timeout() // validated with the config
	if timeout <= 0 {
		timeout = config.DefaultCommandTimeout
	}
	_ = syscall.Kill(r.pid, syscall.SIGTERM)
	t := time.NewTimer(timeout + drainGrace)
	defer t.Stop()
	finished := true
	select {
	case <-r.exited:
	case <-t.C:
		finished = false
	}
	s.mu.Lock()
	_, ours := s.draining[r]
	delete(s.draining, r)
	s.mu.Unlock()
	if !ours {
		return // stopAll stopped it
	}
	r.stop() // go-plugin's side of it; kills it if still there
	if !finished {
		s.logger.Warn("plugin stopped: it had not finished its requests in flight", "plugin", m.found.Name, "pid", r.pid,
			"reason", why, "waited", time.Since(start).Round(time.Millisecond))
		return
	}
	s.logger.Info("plugin stopped", "plugin", m.found.Name, "pid", r.pid,
		"reason", why+"; its requests in flight finished", "took", time.Since(start).Round(time.Millisecond))
}

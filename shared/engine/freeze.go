package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
)

// frozenFlagFile, in the parser's runtime directory, exists while the
// guest's filesystems are frozen and holds when the freeze began. The
// command plugin that froze them keeps its own state (cmd-system: qemu-ga's
// qga.state.isfrozen); this copy lets a parser restarted meanwhile (crash,
// agent restart) keep refusing what is not allowed while frozen, and keep
// the freeze deadline, as a restarted qemu-ga does. The runtime directory is
// a tmpfs: writing the flag never blocks on a frozen filesystem, and a
// reboot, which thaws everything, removes it.
const frozenFlagFile = "frozen"

// DefaultFsfreezeMax is how long the guest may stay frozen unless the
// supervisor says otherwise.
const DefaultFsfreezeMax = 10 * time.Minute

// freezeGuard is the parser's view of the guest's frozen state: it refuses
// commands while frozen (see dispatch), records the state where a restarted
// parser finds it, and thaws the guest on its own when the freeze outlives
// its deadline or, where a channel asks for it, when the host that froze it
// goes away. The thaw runs the command a plugin declared with
// CommandSpec.thaws.
type freezeGuard struct {
	logger hclog.Logger
	// thaw runs the thawing command; set by the engine.
	thaw func(ctx context.Context, reason string)

	frozen atomic.Bool

	mu    sync.Mutex
	flag  string        // "" until configured
	max   time.Duration // 0: no deadline
	since time.Time     // when the current freeze began
	timer *time.Timer
	// owner froze the guest through a channel with thaw_on_disconnect.
	owner *dispatcher
}

// configure sets the flag's place (once) and the deadline. A flag left by
// an earlier parser of the same boot restores the frozen state.
func (g *freezeGuard) configure(runtimeDir string, maxFreeze time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.max = maxFreeze
	if g.flag == "" && runtimeDir != "" {
		if err := os.MkdirAll(runtimeDir, 0o700); err != nil {
			g.logger.Warn("no runtime directory: a restarted parser would not know the guest is frozen", "error", err)
		} else {
			g.flag = filepath.Join(runtimeDir, frozenFlagFile)
			g.loadLocked()
		}
	}
	if g.frozen.Load() {
		g.armLocked()
	}
}

func (g *freezeGuard) loadLocked() {
	b, err := os.ReadFile(g.flag)
	if err != nil {
		return
	}
	g.since = time.Now()
	if ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
		g.since = time.Unix(0, ns)
	}
	g.frozen.Store(true)
	g.logger.Warn("the guest's filesystems were left frozen: only the commands allowed while frozen run until a thaw",
		"flag", g.flag, "frozen_for", time.Since(g.since).Round(time.Second))
}

// isFrozen tells whether commands not allowed while frozen are refused.
func (g *freezeGuard) isFrozen() bool { return g.frozen.Load() }

// record takes a freeze state reported by a command plugin.
func (g *freezeGuard) record(state pb.FreezeState, by *dispatcher) {
	switch state {
	case pb.FreezeState_FREEZE_STATE_FROZEN:
		g.set(true, by)
	case pb.FreezeState_FREEZE_STATE_THAWED:
		g.set(false, nil)
	}
}

func (g *freezeGuard) set(frozen bool, by *dispatcher) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if frozen && by != nil && by.st.cfg.GetThawOnDisconnect() {
		g.owner = by
	}
	if g.frozen.Swap(frozen) == frozen {
		return
	}
	if !frozen {
		g.owner = nil
		if g.timer != nil {
			g.timer.Stop()
			g.timer = nil
		}
		if g.flag != "" {
			if err := os.Remove(g.flag); err != nil && !errors.Is(err, os.ErrNotExist) {
				g.logger.Warn("frozen flag not removed", "flag", g.flag, "error", err)
			}
		}
		return
	}
	g.since = time.Now()
	if g.flag != "" {
		stamp := strconv.FormatInt(g.since.UnixNano(), 10) + "\n"
		if err := os.WriteFile(g.flag, []byte(stamp), 0o600); err != nil {
			g.logger.Warn("frozen flag not recorded: a restarted parser would not know", "flag", g.flag, "error", err)
		}
	}
	g.armLocked()
}

// armLocked starts the deadline of the current freeze (a timer, nothing
// runs until it fires).
func (g *freezeGuard) armLocked() {
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	if g.max <= 0 || g.thaw == nil {
		return
	}
	left := time.Until(g.since.Add(g.max))
	since := g.since
	g.timer = time.AfterFunc(max(left, 0), func() {
		g.mu.Lock()
		current := g.frozen.Load() && g.since.Equal(since)
		g.mu.Unlock()
		if current {
			g.thaw(context.Background(), "the freeze outlived fsfreeze_max ("+g.max.String()+")")
		}
	})
}

// thawRetry is the wait before the agent tries again a thaw of its own
// that failed (the plugin restarting, say).
const thawRetry = 30 * time.Second

// retryLater tries the thaw again after thawRetry while the same freeze
// lasts.
func (g *freezeGuard) retryLater(reason string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.frozen.Load() || g.thaw == nil {
		return
	}
	since := g.since
	if g.timer != nil {
		g.timer.Stop()
	}
	g.timer = time.AfterFunc(thawRetry, func() {
		g.mu.Lock()
		current := g.frozen.Load() && g.since.Equal(since)
		g.mu.Unlock()
		if current {
			g.thaw(context.Background(), reason)
		}
	})
}

// hostGone is told when the host of d's session disconnects or the session
// ends: if that host froze the guest through a channel with
// thaw_on_disconnect, the guest is thawed.
func (g *freezeGuard) hostGone(d *dispatcher) {
	g.mu.Lock()
	owner := g.frozen.Load() && g.owner == d
	g.mu.Unlock()
	if owner && g.thaw != nil {
		go g.thaw(context.Background(), "the host that froze the guest disconnected (thaw_on_disconnect)")
	}
}

// thawOnOwnAccord runs the command that thaws, as the engine's own caller,
// and records the outcome like any reply.
func (e *Engine) thawOnOwnAccord(ctx context.Context, reason string) {
	e.mu.RLock()
	var route *pb.Route
	for _, r := range e.routes {
		if r.GetSpec().GetThaws() {
			route = r
			break
		}
	}
	timeout := e.limits.commandTimeout
	e.mu.RUnlock()
	if route == nil {
		e.logger.Error("the guest stays frozen: no installed command thaws it", "reason", reason)
		return
	}
	e.logger.Warn("thawing the guest's filesystems", "reason", reason, "command", route.Command)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req := &pb.RunRequest{
		Command:          route.Command,
		ArgsJson:         []byte("{}"),
		Caller:           &pb.Caller{Channel: "guest-agent", PeerPid: int32(os.Getpid())},
		DeadlineUnixNano: time.Now().Add(timeout).UnixNano(),
	}
	resp, release, err := e.call(ctx, route.Plugin, req)
	if err != nil {
		e.logger.Error("thaw failed; trying again later", "command", route.Command, "retry_in", thawRetry, "error", err)
		e.freeze.retryLater(reason)
		return
	}
	release()
	e.freeze.record(resp.FreezeState, nil)
	if resp.Error != nil {
		e.logger.Error("thaw failed; trying again later", "command", route.Command, "retry_in", thawRetry, "error", resp.Error.Desc)
		e.freeze.retryLater(reason)
		return
	}
	e.logger.Info("guest thawed by the agent", "result", string(resp.ResultJson))
}

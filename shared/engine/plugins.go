package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// call runs req on the named plugin's data plane, dialling (and asking the
// supervisor to start the plugin) when needed.
func (e *Engine) call(ctx context.Context, pluginName string, req *pb.RunRequest) (*pb.RunResponse, func(), error) {
	e.mu.RLock()
	pc := e.plugins[pluginName]
	e.mu.RUnlock()
	if pc == nil {
		return nil, nil, fmt.Errorf("no route to plugin %s", pluginName)
	}
	pc.begin()
	defer pc.end()
	var resp *pb.RunResponse
	for attempt := 0; ; attempt++ {
		c, err := pc.client(ctx)
		if err != nil {
			return nil, nil, err
		}
		resp, err = c.Call(ctx, req)
		if err != nil {
			e.logger.Debug("data plane call failed", "plugin", pluginName, "attempt", attempt, "error", err)
		}
		if errors.Is(err, dataplane.ErrNotDelivered) && attempt < 2 {
			continue // the plugin had gone before we sent: try its successor
		}
		if err != nil {
			return resp, nil, wrapLost(pluginName, err)
		}
		blob := resp.Blob
		return resp, func() { c.Release(blob) }, nil
	}
}

func wrapLost(pluginName string, err error) error {
	if errors.Is(err, dataplane.ErrConnectionLost) {
		return fmt.Errorf("plugin %s exited while running the command; it is being restarted", pluginName)
	}
	return err
}

type pluginConn struct {
	name   string
	engine *Engine

	mu     sync.Mutex
	socket string
	conn   *dataplane.Client
	// lost: the last connection broke, so the plugin died or is dying;
	// the supervisor is asked before redialling.
	lost bool
	// released: the connection was closed for idleness and the
	// supervisor told (idle exit); it is asked before redialling, since
	// the plugin may be leaving.
	released bool
	// inFlight counts calls on the plugin; idle fires plugin_idle_exit
	// after the last one ended (one timer, armed only by use).
	inFlight int
	idle     *time.Timer
	// releasing is closed when a release under way has its answer.
	releasing chan struct{}
}

// begin counts a call; the plugin is not idle while it runs.
func (pc *pluginConn) begin() {
	pc.mu.Lock()
	pc.inFlight++
	if pc.idle != nil {
		pc.idle.Stop()
	}
	pc.mu.Unlock()
}

// end uncounts a call and, after the last one, arms the idle timer.
func (pc *pluginConn) end() {
	// The engine's lock before the connection's, never inside it:
	// Configure holds the engine's while it sets sockets.
	after, host := pc.engine.idleRelease()
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.inFlight--
	if pc.inFlight > 0 || after <= 0 || host == nil {
		return
	}
	if pc.idle == nil {
		pc.idle = time.AfterFunc(after, pc.release)
	} else {
		pc.idle.Reset(after)
	}
}

// release asks the supervisor to stop a plugin idle for plugin_idle_exit;
// the plugin stays if it holds something a later command needs (a child,
// a handle, a freeze) or has read-ahead runs to settle. The connection
// stays open while that is decided, so a plugin that stays keeps its state
// on it; calls meanwhile wait for the answer (releasing), then either use
// the connection again or have the supervisor start a new process.
func (pc *pluginConn) release() {
	host := pc.engine.hostClient()
	pc.mu.Lock()
	if pc.inFlight > 0 || pc.conn == nil || pc.releasing != nil || host == nil {
		pc.mu.Unlock()
		return
	}
	conn := pc.conn
	done := make(chan struct{})
	pc.releasing = done
	pc.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	resp, err := host.Release(ctx, &pb.ReleaseRequest{Plugin: pc.name})
	stopped := err == nil && resp.Stopped
	pc.mu.Lock()
	if stopped && pc.conn == conn {
		pc.conn, pc.released = nil, true
	}
	pc.releasing = nil
	close(done)
	pc.mu.Unlock()
	switch {
	case err != nil:
		pc.engine.logger.Debug("idle plugin not released", "plugin", pc.name, "error", err)
	case stopped:
		conn.Close()
		// What the connection and its calls held goes back to the system
		// with the next memory return (one timer), as after a transfer.
		pc.engine.memory.BulkDone()
		pc.engine.logger.Debug("idle plugin released and stopped", "plugin", pc.name)
	default:
		pc.engine.logger.Debug("idle plugin stays (busy)", "plugin", pc.name)
	}
}

func (pc *pluginConn) setSocket(socket string) {
	pc.mu.Lock()
	if socket != pc.socket {
		// Another instance of the plugin (its binary was replaced, or
		// removed and installed again): new requests go to it, and the
		// calls in flight finish on the old connection, which ends when
		// the old instance exits.
		pc.conn, pc.lost = nil, false
	}
	pc.socket = socket
	pc.mu.Unlock()
}

// current returns the live connection, if any, without dialling.
func (pc *pluginConn) current() *dataplane.Client {
	if pc == nil {
		return nil
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.conn == nil {
		return nil
	}
	select {
	case <-pc.conn.Done():
		return nil
	default:
		return pc.conn
	}
}

func (pc *pluginConn) client(ctx context.Context) (*dataplane.Client, error) {
	// Read before taking the connection's lock (lock order: the engine's,
	// then a connection's; Configure sets sockets under the engine's).
	host := pc.engine.hostClient()
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for pc.releasing != nil {
		// The supervisor is deciding whether the plugin stops.
		wait := pc.releasing
		pc.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			pc.mu.Lock()
			return nil, ctx.Err()
		}
		pc.mu.Lock()
	}
	if pc.conn != nil {
		select {
		case <-pc.conn.Done():
			pc.conn, pc.lost = nil, true
		default:
			return pc.conn, nil
		}
	}
	deadline := time.Now().Add(pluginRestartWaitBudget)
	for {
		if pc.socket != "" && !((pc.lost || pc.released) && host != nil) {
			c, err := dataplane.Dial(ctx, pc.socket)
			if err == nil {
				pc.conn = c
				return c, nil
			}
		}
		// Not running (lazy start) or being restarted: ask the supervisor,
		// which starts it or waits for its restart.
		if host == nil {
			return nil, fmt.Errorf("plugin %s is not running", pc.name)
		}
		resp, err := host.EnsureStarted(ctx, &pb.EnsureStartedRequest{Plugin: pc.name, ConnectionLost: pc.lost})
		if err == nil {
			pc.socket, pc.lost, pc.released = resp.DataplaneSocket, false, false
			var c *dataplane.Client
			if c, err = dataplane.Dial(ctx, pc.socket); err == nil {
				pc.conn = c
				return c, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("plugin %s is not available: %v", pc.name, err)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// idleRelease returns plugin_idle_exit (0 keeps plugins) and the
// supervisor to release plugins through, in one look (every plugin call
// ends with it).
func (e *Engine) idleRelease() (time.Duration, pb.HostClient) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.limits.pluginIdleExit, e.host
}

func (e *Engine) hostClient() pb.HostClient {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.host
}

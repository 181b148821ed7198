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
}

func (pc *pluginConn) setSocket(socket string) {
	pc.mu.Lock()
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
	pc.mu.Lock()
	defer pc.mu.Unlock()
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
		if pc.socket != "" && !(pc.lost && pc.engine.hostClient() != nil) {
			c, err := dataplane.Dial(ctx, pc.socket)
			if err == nil {
				pc.conn = c
				return c, nil
			}
		}
		// Not running (lazy start) or being restarted: ask the supervisor,
		// which starts it or waits for its restart.
		host := pc.engine.hostClient()
		if host == nil {
			return nil, fmt.Errorf("plugin %s is not running", pc.name)
		}
		resp, err := host.EnsureStarted(ctx, &pb.EnsureStartedRequest{Plugin: pc.name, ConnectionLost: pc.lost})
		if err == nil {
			pc.socket, pc.lost = resp.DataplaneSocket, false
			c, err := dataplane.Dial(ctx, pc.socket)
			if err == nil {
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

func (e *Engine) hostClient() pb.HostClient {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.host
}

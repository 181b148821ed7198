package engine

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/policy"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
)

func (e *Engine) acceptFeeds(in *session.Inbox, st *channelState) {
	for {
		feed, err := in.Accept()
		if err != nil {
			return
		}
		go e.serveFeed(feed, st)
	}
}

// serveFeed receives sessions and host events from one exchange connection.
func (e *Engine) serveFeed(feed *session.Feed, st *channelState) {
	defer feed.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // the exchange went away: its sessions end with it
	persistent := map[string]*streamSession{}
	var refused refusalLog
	for {
		ev, f, err := feed.Next()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				e.logger.Debug("inbox feed ended", "channel", st.cfg.Name, "error", err)
			}
			return
		}
		switch ev.Type {
		case session.EventHandoff:
			if !session.KnownKind(ev.Kind) {
				// A later exchange's kind of session: refused, not misread
				// as a byte stream (SessionEvent in guestagent.proto).
				e.logger.Warn("session refused: unknown kind", "channel", st.cfg.Name, "kind", ev.Kind, "event_version", ev.Version)
				f.Close()
				continue
			}
			if st.sessions.Load() >= e.limits.maxSessions {
				refused.note(e.logger, st.cfg.Name, e.limits.maxSessions)
				f.Close()
				continue
			}
			caller := &pb.Caller{Channel: st.cfg.Name, Dialect: st.cfg.Dialect, PeerPid: -1, PeerUid: -1, PeerGid: -1}
			if ev.Peer != nil {
				caller.PeerPid, caller.PeerUid, caller.PeerGid = ev.Peer.PID, ev.Peer.UID, ev.Peer.GID
				caller.PeerGroups = ev.Peer.Groups
			}
			if ev.Kind == session.KindMessages {
				go e.serveMessages(ctx, st, f, caller)
				continue
			}
			if ev.Kind == session.KindListener {
				// Not tied to this feed: the exchange may now exit.
				go e.serveListener(st, f, ev)
				continue
			}
			s := e.newStreamSession(st, f, caller, ev)
			st.sessions.Add(1)
			if ev.WatchHost {
				// Not tied to this feed: the exchange is done with it.
				go e.watchHost(st, f, s)
				go func() {
					e.serveStream(context.Background(), st, s)
					// Only the port failing ends it (unplugged): nothing
					// else here would ever open it again.
					e.reopenChannel(st.cfg.Name, "the handed-over port ended (unplugged?)")
				}()
				continue
			}
			if ev.Persistent {
				if old := persistent[ev.Session]; old != nil {
					old.cancel()
				}
				persistent[ev.Session] = s
			}
			go e.serveStream(ctx, st, s)
		case session.EventHostConnected, session.EventHostDisconnected:
			if s := persistent[ev.Session]; s != nil {
				s.hostEvent(ev.Type == session.EventHostConnected)
			}
		}
	}
}

// serveListener accepts connections on a listening socket an exchange
// handed over, doing what the exchange's accept loop did: the connection
// limit and the peer's credentials.
func (e *Engine) serveListener(st *channelState, f *os.File, ev session.Event) {
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		e.logger.Error("handed-over listener unusable", "channel", st.cfg.Name, "error", err)
		return
	}
	ln, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		e.logger.Error("handed-over listener is not a unix socket", "channel", st.cfg.Name)
		return
	}
	ln.SetUnlinkOnClose(ev.ListenerPath != "")
	e.mu.Lock()
	e.listeners = append(e.listeners, ln)
	e.mu.Unlock()
	e.logger.Info("serving a handed-over listener", "channel", st.cfg.Name, "origin", ev.Origin, "max_connections", ev.MaxConnections)
	// The exchange's max_connections and the engine's max_sessions both
	// bound the connections served at once.
	limit := e.limits.maxSessions
	if ev.MaxConnections > 0 {
		limit = min(limit, int64(ev.MaxConnections))
	}
	var refused refusalLog
	var backoff dataplane.AcceptBackoff
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors: the connections that hold them end
			// some day, the channel must not.
			if backoff.Retry(err, nil) {
				e.logger.Warn("accept failed; retrying", "channel", st.cfg.Name, "error", err, "retry_in", backoff.Delay())
				continue
			}
			e.logger.Error("accept failed; channel stopped", "channel", st.cfg.Name, "error", err)
			return
		}
		backoff.Reset()
		if st.sessions.Load() >= limit {
			refused.note(e.logger, st.cfg.Name, limit)
			conn.Close()
			continue
		}
		caller := &pb.Caller{Channel: st.cfg.Name, Dialect: st.cfg.Dialect, PeerPid: -1, PeerUid: -1, PeerGid: -1}
		// With the supplementary groups: a channel's policy may name them.
		if peer, err := policy.PeerIdentity(conn); err == nil {
			caller.PeerPid, caller.PeerUid, caller.PeerGid, caller.PeerGroups = peer.PID, peer.UID, peer.GID, peer.Groups
		}
		dataplane.GrowSendBuffer(conn) // replies to file reads are megabytes
		s := e.newStreamSession(st, conn, caller, session.Event{Origin: ev.Origin})
		st.sessions.Add(1) // counted from here, so the next accept sees it
		go e.serveStream(context.Background(), st, s)
	}
}

// refusalLog logs refused connections without letting a peer that keeps
// connecting flood the log: one line, then a count every ten seconds.
type refusalLog struct {
	last  time.Time
	count int
}

func (r *refusalLog) note(logger hclog.Logger, channel string, limit int64) {
	r.count++
	if time.Since(r.last) < 10*time.Second {
		return
	}
	logger.Warn("connections refused: session limit reached", "channel", channel, "limit", limit, "refused", r.count)
	r.last, r.count = time.Now(), 0
}

func (e *Engine) serveMessages(ctx context.Context, st *channelState, f *os.File, caller *pb.Caller) {
	mc, err := session.NewMessageConn(f)
	f.Close()
	if err != nil {
		e.logger.Error("message session refused", "channel", st.cfg.Name, "error", err)
		return
	}
	defer mc.Close()
	go func() {
		<-ctx.Done()
		mc.Close()
	}()
	d := e.newDispatcher(st, caller)
	defer e.freeze.hostGone(d)
	sem := make(chan struct{}, e.limits.maxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		id, payload, err := mc.Read()
		if err != nil {
			return
		}
		req := append([]byte(nil), payload...)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if reply := st.dialect.HandleMessage(ctx, d, req); reply != nil {
				if err := mc.Write(id, reply); err != nil {
					e.logger.Warn("reply lost", "channel", st.cfg.Name, "error", err)
				}
			}
		}()
	}
}

package engine

import (
	"context"
	"encoding/json"
	"sync/atomic"

	"github.com/guest-agent/guest-agent/shared/dialect"
)

// pluginQueue runs one plugin's commands of a session in arrival order.
type pluginQueue struct {
	jobs    chan func()
	waiting atomic.Int32 // queued or running
}

// Go runs a command without blocking the session's reader: the dialect's
// local commands run at once in the caller; commands of one plugin run one
// after another in the order they arrived (a pipelining client's writes to
// one file stay in order), and different plugins run side by side, so a
// slow command never holds up a ping. done receives the outcome, to be
// written with WriteReply. Go blocks while the session has its limit of
// commands in flight.
//
// A local command declared Barrier (qga's guest-sync) is one: once Go
// returns for it, no reply to a request that arrived before it is written
// (their commands still run; their replies are dropped).
func (s *streamSession) Go(ctx context.Context, command string, args json.RawMessage, done func(*dialect.Outcome)) {
	local := s.st.local[command]
	barrier := local != nil && local.Barrier
	if barrier {
		s.newEpoch()
	}
	place := dialect.Place{Epoch: s.epoch.Load(), HostEpoch: s.hostEpoch.Load(), Barrier: barrier}
	if s.st.ordered {
		place.Seq = s.order.take()
	}
	// The request counts against the memory budget until its reply is
	// written or dropped.
	held := int64(len(args))
	s.hold.add(held)
	arrived := done
	done = func(o *dialect.Outcome) {
		o.Place = place
		arrived(o)
		s.order.finish(place.Seq) // a reply the dialect did not write
		s.hold.add(-held)
	}
	route, routesPending := s.e.lookup(command)
	// A local command that lists the commands (guest-info) waits while the
	// routes are being learnt: not on the reader, or a sync behind it
	// would wait too.
	if local != nil && !(local.ListsCommands && routesPending) {
		done(s.Dispatch(ctx, command, args))
		return
	}
	// A command refused without a plugin is answered at once, before
	// anything that follows it (an unknown command, then a sync).
	if local == nil && (route != nil || !routesPending) {
		if o := s.refusal(command, route); o != nil {
			done(o)
			return
		}
	}
	key := ""
	if route != nil {
		key = route.Plugin
	}
	s.queuesMu.Lock()
	q := s.queues[key]
	if q == nil {
		q = &pluginQueue{jobs: make(chan func(), cap(s.inflight))}
		s.queues[key] = q
		go q.run(ctx)
	}
	s.queuesMu.Unlock()

	run := func() {
		o, next := s.dispatch(ctx, command, args)
		done(o)
		if next != nil {
			next()
		}
	}
	// The reply to a request a read-ahead run answers is ready: write it
	// from here rather than wake another thread for it. Only when nothing
	// of this plugin is queued before it, so the order holds.
	if q.waiting.Load() == 0 && s.readAhead && s.peekAhead(command, argsObject(args)) {
		run()
		return
	}
	select {
	case s.inflight <- struct{}{}:
	case <-ctx.Done():
		s.order.finish(place.Seq)
		s.hold.add(-held)
		return
	}
	s.wg.Add(1)
	q.waiting.Add(1)
	q.jobs <- func() {
		defer func() { q.waiting.Add(-1); <-s.inflight; s.wg.Done() }()
		run()
	}
}

func (q *pluginQueue) run(ctx context.Context) {
	for {
		select {
		case job := <-q.jobs:
			job()
		case <-ctx.Done():
			// drain what was queued so wait() returns
			for {
				select {
				case job := <-q.jobs:
					job()
				default:
					return
				}
			}
		}
	}
}

package engine

import "sync"

// replyOrder keeps the replies of a session in the order of its requests,
// for a dialect that asks it (dialect.Options.OrderedReplies): each request
// takes a place in turn, and its reply is written when the replies of every
// place before it were written, dropped or skipped. Commands still run side
// by side; only their writes wait. The zero value is ready; place 0 is no
// place (unordered), which every method ignores.
type replyOrder struct {
	mu    sync.Mutex
	given uint64 // places given out
	turn  uint64 // the place whose reply goes next, once the first is given
	// ahead are places finished before their turn (a reply not written).
	ahead map[uint64]bool
	moved chan struct{} // closed and replaced when turn moves
}

// take gives out the next place.
func (r *replyOrder) take() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.given++
	if r.turn == 0 {
		r.turn = 1
	}
	return r.given
}

// wait blocks until it is place's turn, or ending is closed (the session
// is over: nothing it writes reaches anybody).
func (r *replyOrder) wait(place uint64, ending <-chan struct{}) {
	if place == 0 {
		return
	}
	for {
		r.mu.Lock()
		if r.turn >= place {
			r.mu.Unlock()
			return
		}
		if r.moved == nil {
			r.moved = make(chan struct{})
		}
		moved := r.moved
		r.mu.Unlock()
		select {
		case <-moved:
		case <-ending:
			return
		}
	}
}

// finish ends place: its reply was written, dropped, or will not be
// written. Finishing a place twice is harmless.
func (r *replyOrder) finish(place uint64) {
	if place == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if place < r.turn {
		return
	}
	if place > r.turn {
		if r.ahead == nil {
			r.ahead = map[uint64]bool{}
		}
		r.ahead[place] = true
		return
	}
	r.turn++
	for r.ahead[r.turn] {
		delete(r.ahead, r.turn)
		r.turn++
	}
	if r.moved != nil {
		close(r.moved)
		r.moved = nil
	}
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

// firstHandle is qemu-ga's QGA_PSTATE_DEFAULT_FD_COUNTER.
const firstHandle = 1000

// stateFile is the name qemu-ga gives its persistent state in its state
// directory; the format is the same GLib key file ("[global]", fd_counter).
const stateFile = "qga.state"

// fileHandle is one open file. Its mutex serializes the operations on the
// handle, since they share the file offset.
type fileHandle struct {
	id      int64
	mu      sync.Mutex
	fd      int // -1 once closed
	regular bool
	// aheads are reads the parser ran before the host asked for them (see
	// dataplane/readahead.go), oldest first; the position stays after them
	// only as far as the parser gives them to the host.
	aheads []*readAheadMark
	// lost: the parser that read ahead stopped before saying how much of
	// it the host got, so nobody knows the position the host expects.
	lost bool
}

// readAheadMark remembers how to undo the reads of one read-ahead batch.
type readAheadMark struct {
	ticket *dataplane.Ticket
	starts []int64 // the position before each read
}

// settleAhead makes the position what the host has seen before anything
// else uses it: reads ahead that the parser did not give to the host are
// undone. run, the read-ahead batch about to read, if any, keeps its own
// earlier reads and those it carries on from. Called with h.mu held.
func (h *fileHandle) settleAhead(ctx context.Context, run *dataplane.Ticket) error {
	if len(h.aheads) == 0 {
		return nil
	}
	if last := h.aheads[len(h.aheads)-1]; run != nil && (run == last.ticket || run.Continues(last.ticket)) {
		return nil
	}
	undone := false
	for len(h.aheads) > 0 {
		m := h.aheads[0]
		claimed, err := m.ticket.Settle(ctx)
		if errors.Is(err, dataplane.ErrUnsettled) {
			h.aheads, h.lost = nil, true
			return errPositionLost(h.id)
		}
		if err != nil {
			return sdk.Errorf("handle '%d' is busy: %v", h.id, err)
		}
		h.aheads = h.aheads[1:]
		// Later batches carry on from this one: once it is undone, they
		// were released too and there is nothing more to undo.
		if !undone && claimed < len(m.starts) {
			if _, err := unix.Seek(h.fd, m.starts[claimed], unix.SEEK_SET); err != nil {
				return sdk.Errorf("failed to restore the position of handle '%d': %s", h.id, strerror(err))
			}
			undone = true
		}
	}
	return nil
}

func errPositionLost(id int64) error {
	return sdk.Errorf("handle '%d' lost its position: the agent's parser stopped while reading ahead on it; close the handle and open the file again", id)
}

// recordAhead notes a read of batch run that started at start.
func (h *fileHandle) recordAhead(run *dataplane.Ticket, start int64) {
	if n := len(h.aheads); n > 0 && h.aheads[n-1].ticket == run {
		h.aheads[n-1].starts = append(h.aheads[n-1].starts, start)
		return
	}
	h.aheads = append(h.aheads, &readAheadMark{ticket: run, starts: []int64{start}})
}

// handleTable maps handle numbers to open files and hands out numbers from a
// counter that persists across restarts, as qemu-ga's ga_get_fd_handle.
type handleTable struct {
	mu       sync.Mutex
	open     map[int64]*fileHandle
	reserved int // opens in progress, counted against max
	max      int // 0: no limit

	// counterMu orders counter increments with their writes to disk, so the
	// file never holds a smaller value than a handle already given out.
	counterMu sync.Mutex
	next      int64
	statePath string // "" keeps the counter in memory only
}

func newHandleTable(max int) *handleTable {
	return &handleTable{open: make(map[int64]*fileHandle), max: max, next: firstHandle}
}

func (t *handleTable) peekNext() int64 {
	t.counterMu.Lock()
	defer t.counterMu.Unlock()
	return t.next
}

// loadCounter reads the persisted counter from dir, or starts it at 1000
// when the state file does not exist yet.
func (t *handleTable) loadCounter(dir string) error {
	t.counterMu.Lock()
	defer t.counterMu.Unlock()
	path := filepath.Join(dir, stateFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		t.next = firstHandle
		t.statePath = path
		return t.writeCounterLocked()
	case err != nil:
		return fmt.Errorf("read handle counter: %w", err)
	}
	n, err := parseCounter(b)
	if err != nil {
		// Starting over at 1000 could hand a stale handle number to a new
		// file; refuse, as qemu-ga refuses to start with a corrupt state file.
		return fmt.Errorf("handle counter in %s: %w (remove the file only if no host still holds a handle)", path, err)
	}
	t.next = n
	t.statePath = path
	return nil
}

// parseCounter reads fd_counter from the [global] group of a key file.
func parseCounter(b []byte) (int64, error) {
	group := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '[' && line[len(line)-1] == ']' {
			group = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || group != "global" || strings.TrimSpace(k) != "fd_counter" {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("invalid fd_counter %q", strings.TrimSpace(v))
		}
		return n, nil
	}
	return 0, errors.New("no fd_counter in group [global]")
}

// writeCounterLocked persists t.next atomically (temporary file, fsync,
// rename), so a crash leaves either the old or the new value.
func (t *handleTable) writeCounterLocked() error {
	if t.statePath == "" {
		return nil
	}
	tmp := t.statePath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "[global]\nfd_counter=%d\n", t.next)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, t.statePath)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// nextHandle takes the next handle number and commits the counter to disk
// before the number is used.
func (t *handleTable) nextHandle() (int64, error) {
	t.counterMu.Lock()
	defer t.counterMu.Unlock()
	if t.next == math.MaxInt64 {
		return -1, sdk.Errorf("no handle numbers left")
	}
	h := t.next
	t.next++
	if err := t.writeCounterLocked(); err != nil {
		return -1, sdk.Errorf("failed to commit persistent state to disk")
	}
	return h, nil
}

// reserve takes a slot for an open in progress, so the limit holds while
// the file is being opened without the table locked.
func (t *handleTable) reserve() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.max > 0 && len(t.open)+t.reserved >= t.max {
		return false
	}
	t.reserved++
	return true
}

func (t *handleTable) release() {
	t.mu.Lock()
	t.reserved--
	t.mu.Unlock()
}

// add registers an opened file under a new handle number, using up the
// slot taken by reserve.
func (t *handleTable) add(fd int, regular bool) (int64, error) {
	id, err := t.nextHandle()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.reserved--
	if err != nil {
		return -1, err
	}
	t.open[id] = &fileHandle{id: id, fd: fd, regular: regular}
	return id, nil
}

// find returns the open handle id, or qemu-ga's error.
func (t *handleTable) find(id int64) (*fileHandle, error) {
	t.mu.Lock()
	h := t.open[id]
	t.mu.Unlock()
	if h == nil {
		return nil, errHandleNotFound(id)
	}
	return h, nil
}

func errHandleNotFound(id int64) error {
	return sdk.Errorf("handle '%d' has not been found", id)
}

// lock finds handle id and locks it for one operation; the caller unlocks.
// A handle closed while the caller waited is reported as not found. The
// position is settled (see settleAhead; run is the caller's read-ahead
// batch, if any).
func (t *handleTable) lock(ctx context.Context, id int64, run *dataplane.Ticket) (*fileHandle, error) {
	h, err := t.find(id)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	if h.fd < 0 {
		h.mu.Unlock()
		return nil, errHandleNotFound(id)
	}
	if h.lost {
		h.mu.Unlock()
		return nil, errPositionLost(id)
	}
	if err := h.settleAhead(ctx, run); err != nil {
		h.mu.Unlock()
		return nil, err
	}
	return h, nil
}

// remove takes handle id out of the table and closes its file.
func (t *handleTable) remove(ctx context.Context, id int64) error {
	t.mu.Lock()
	h := t.open[id]
	delete(t.open, id)
	t.mu.Unlock()
	if h == nil {
		return errHandleNotFound(id)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// Reads ahead are settled even though the position no longer matters:
	// released, the parser will not show them after the close.
	for _, m := range h.aheads {
		_, _ = m.ticket.Settle(ctx)
	}
	h.aheads = nil
	fd := h.fd
	h.fd = -1
	if fd < 0 {
		return errHandleNotFound(id)
	}
	// Linux releases the descriptor even when close reports an error (EIO
	// from a network file system), so the handle is gone either way.
	if err := unix.Close(fd); err != nil && err != unix.EINTR {
		return sdk.Errorf("failed to close handle: %s", strerror(err))
	}
	return nil
}

func (t *handleTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.open)
}

func (t *handleTable) closeAll() {
	t.mu.Lock()
	ids := make([]int64, 0, len(t.open))
	for id := range t.open {
		ids = append(ids, id)
	}
	t.mu.Unlock()
	for _, id := range ids {
		_ = t.remove(context.Background(), id)
	}
}

// busy keeps the plugin from leaving while idle (sdk.CommandPlugin.Busy)
// while a handle is open: the host may use it again at any time.
func (t *handleTable) busy() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.open) + t.reserved; n > 0 {
		return fmt.Sprintf("%d file handles open", n)
	}
	return ""
}

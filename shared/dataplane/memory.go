package dataplane

import (
	"runtime"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/procmem"
)

// BulkSize is the blob size from which a transfer counts as bulk.
const BulkSize = 64 << 10

// bulkIdleDelay is how long after the last bulk transfer a process gives
// its buffers back to the system.
const bulkIdleDelay = 5 * time.Second

// MemoryReturner gives the memory of bulk transfers back once they stop. A
// file copy fills the buffer pools with megabytes that the garbage collector
// would only drop minutes later (a pool survives one collection, and an idle
// process collects every two minutes): a guest would see the agent keep that
// memory long after the copy. One timer, armed by transfers: nothing runs
// while the agent is idle.
type MemoryReturner struct {
	mu    sync.Mutex
	timer *time.Timer
}

// BulkDone notes the end of a burst (a bulk transfer, a host gone, a plugin
// released); the memory goes back bulkIdleDelay after the last one.
func (m *MemoryReturner) BulkDone() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.timer == nil {
		m.timer = time.AfterFunc(bulkIdleDelay, m.release)
		return
	}
	m.timer.Reset(bulkIdleDelay)
}

func (m *MemoryReturner) release() {
	runtime.GC() // the pools' buffers move to their victim caches
	procmem.ReturnIdle()
}

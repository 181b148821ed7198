package dataplane

import (
	"math/bits"
	"sync"
)

// BufferPool recycles large byte buffers by power-of-two size class. File
// reads and writes move up to 48 MiB per request; a fresh buffer for each
// costs page faults and garbage collection far above the copy itself.
type BufferPool struct {
	classes [maxClass - minClass + 1]sync.Pool
	// Handed, when set, is called each time Get hands out a pooled
	// buffer: whoever owns the pool learns that memory went into it and
	// can give it back to the system once things calm down.
	Handed func()
}

const (
	minClass = 16 // 64 KiB: smaller buffers are cheap to allocate
	maxClass = 27 // 128 MiB
)

func class(n int) int {
	if n <= 1<<minClass {
		return minClass
	}
	return bits.Len(uint(n - 1))
}

// Get returns a buffer of length n. Small or huge ones are plain
// allocations.
func (p *BufferPool) Get(n int) []byte {
	c := class(n)
	if p == nil || n < 1<<(minClass-2) || c > maxClass {
		return make([]byte, n)
	}
	if p.Handed != nil {
		p.Handed()
	}
	if b, ok := p.classes[c-minClass].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<c)
}

// Put returns a buffer obtained from Get. The caller must not use it again.
func (p *BufferPool) Put(b []byte) {
	if p == nil {
		return
	}
	c := cap(b)
	if c < 1<<minClass || c > 1<<maxClass || c&(c-1) != 0 {
		return // not one of ours
	}
	b = b[:0]
	p.classes[bits.Len(uint(c))-1-minClass].Put(&b)
}

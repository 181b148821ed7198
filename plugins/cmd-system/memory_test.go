package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

type memBlock struct {
	PhysIndex  uint64 `json:"phys-index"`
	Online     bool   `json:"online"`
	CanOffline *bool  `json:"can-offline"`
}

func TestMemoryBlocksOfThisMachine(t *testing.T) {
	if _, err := os.Stat("/sys/devices/system/memory/block_size_bytes"); err != nil {
		t.Skipf("no memory blocks in sysfs here: %v", err)
	}
	tp := newTestPlugin(t, nil)
	var info struct {
		Size uint64 `json:"size"`
	}
	tp.ok("guest-get-memory-block-info", "", &info)
	if info.Size == 0 || info.Size&(info.Size-1) != 0 {
		t.Fatalf("block size %d is not a power of two", info.Size)
	}
	var blocks []memBlock
	tp.ok("guest-get-memory-blocks", "", &blocks)
	online := uint64(0)
	seen := map[uint64]bool{}
	for _, b := range blocks {
		if seen[b.PhysIndex] {
			t.Errorf("block %d listed twice", b.PhysIndex)
		}
		seen[b.PhysIndex] = true
		if b.CanOffline == nil {
			t.Errorf("block %d: can-offline missing", b.PhysIndex)
		}
		if b.Online {
			online++
		}
		if _, err := os.Stat("/sys/devices/system/memory/memory" + strconv.FormatUint(b.PhysIndex, 10)); err != nil {
			t.Errorf("block %d has no sysfs directory", b.PhysIndex)
		}
	}
	// sysinfo(2) counts the RAM the kernel manages: all of it sits in online
	// blocks.
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		t.Fatal(err)
	}
	if total := uint64(si.Totalram) * uint64(si.Unit); online*info.Size < total {
		t.Errorf("%d online blocks of %d bytes hold less than the %d bytes of RAM", online, info.Size, total)
	}
}

// fakeMemory builds memory0 (online, removable), memory1 (offline, not
// removable), memory7 (an old kernel's: no state file) and a non-block entry.
func fakeMemory(t *testing.T) (sys, dir string) {
	sys = t.TempDir()
	dir = filepath.Join(sys, "devices", "system", "memory")
	writeFile(t, filepath.Join(dir, "block_size_bytes"), "8000000\n", 0o644)
	writeFile(t, filepath.Join(dir, "memory0", "state"), "online\n", 0o644)
	writeFile(t, filepath.Join(dir, "memory0", "removable"), "1\n", 0o644)
	writeFile(t, filepath.Join(dir, "memory1", "state"), "offline\n", 0o644)
	writeFile(t, filepath.Join(dir, "memory1", "removable"), "0\n", 0o644)
	writeFile(t, filepath.Join(dir, "memory7", "phys_device"), "0\n", 0o644)
	writeFile(t, filepath.Join(dir, "power", "async"), "disabled\n", 0o644)
	return sys, dir
}

func TestMemoryBlocksFakeTree(t *testing.T) {
	sys, dir := fakeMemory(t)
	tp := newTestPlugin(t, map[string]any{"sys_root": sys})
	var info map[string]uint64
	tp.ok("guest-get-memory-block-info", "", &info)
	if info["size"] != 128<<20 {
		t.Fatalf("size %v", info)
	}
	var blocks []memBlock
	tp.ok("guest-get-memory-blocks", "", &blocks)
	want := map[uint64][2]bool{0: {true, true}, 1: {false, false}, 7: {true, false}}
	if len(blocks) != len(want) {
		t.Fatalf("blocks %+v", blocks)
	}
	for _, b := range blocks {
		w, ok := want[b.PhysIndex]
		if !ok || b.Online != w[0] || b.CanOffline == nil || *b.CanOffline != w[1] {
			t.Errorf("block %+v, want online/can-offline %v", b, w)
		}
	}

	var res []map[string]any
	tp.ok("guest-set-memory-blocks", `{"mem-blks":[
		{"phys-index":0,"online":false},
		{"phys-index":1,"online":true,"can-offline":true},
		{"phys-index":99,"online":true},
		{"phys-index":7,"online":false},
		{"phys-index":7,"online":true},
		{"phys-index":1,"online":true},
		{"phys-index":-1,"online":true}]}`, &res)
	enoent := float64(unix.ENOENT)
	wantRes := []map[string]any{
		{"phys-index": float64(0), "response": "success"},
		{"phys-index": float64(1), "response": "success"},
		{"phys-index": float64(99), "response": "not-found", "error-code": enoent},
		{"phys-index": float64(7), "response": "operation-not-supported", "error-code": enoent},
		// qemu-ga's quirk: nothing to do, but the errno of the missing state
		// file is reported.
		{"phys-index": float64(7), "response": "success", "error-code": enoent},
		{"phys-index": float64(1), "response": "success"},
		{"phys-index": float64(^uint64(0)), "response": "not-found", "error-code": enoent},
	}
	if len(res) != len(wantRes) {
		t.Fatalf("results %v", res)
	}
	for i := range wantRes {
		a, _ := json.Marshal(res[i])
		b, _ := json.Marshal(wantRes[i])
		if string(a) != string(b) {
			t.Errorf("result %d: %s, want %s", i, a, b)
		}
	}
	state := func(n string) string {
		data, _ := os.ReadFile(filepath.Join(dir, "memory"+n, "state"))
		return string(data)
	}
	if !strings.HasPrefix(state("0"), "offline") || !strings.HasPrefix(state("1"), "online") {
		t.Fatalf("states after set: memory0 %q memory1 %q", state("0"), state("1"))
	}

	tp.fails("guest-set-memory-blocks", `{"mem-blks":[{"online":true}]}`, generic, "Parameter 'mem-blks[0].phys-index' is missing")
	tp.fails("guest-set-memory-blocks", `{"mem-blks":[{"phys-index":"0","online":true}]}`, generic,
		"Invalid parameter type for 'mem-blks[0].phys-index', expected: integer")
	tp.fails("guest-set-memory-blocks", `{}`, generic, "Parameter 'mem-blks' is missing")
}

func TestMemoryBlocksUnsupported(t *testing.T) {
	sys := t.TempDir()
	tp := newTestPlugin(t, map[string]any{"sys_root": sys})
	resp := tp.ok("guest-get-memory-blocks", "", nil)
	if string(resp.ResultJson) != "[]" {
		t.Fatalf("without memory blocks: %s", resp.ResultJson)
	}
	var res []map[string]any
	tp.ok("guest-set-memory-blocks", `{"mem-blks":[{"phys-index":3,"online":true}]}`, &res)
	if len(res) != 1 || res[0]["response"] != "operation-not-supported" || res[0]["error-code"] != float64(unix.ENOENT) {
		t.Fatalf("set without memory blocks: %v", res)
	}
	tp.fails("guest-get-memory-block-info", "", generic,
		`open("`+filepath.Join(sys, "devices/system/memory")+`/"): No such file or directory`)

	// A memory directory without blocks: qemu-ga reports that as an error.
	writeFile(t, filepath.Join(sys, "devices", "system", "memory", "block_size_bytes"), "8000000\n", 0o644)
	tp.fails("guest-get-memory-blocks", "", generic, "guest reported zero memory blocks!")
}

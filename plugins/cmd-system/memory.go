package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func (s *system) memoryCommands() []sdk.Command {
	return []sdk.Command{
		{
			Name:        "guest-get-memory-blocks",
			Description: "List the memory blocks, whether online and whether they can be offlined",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getMemoryBlocks,
		},
		{
			Name:        "guest-set-memory-blocks",
			Description: "Online or offline memory blocks; returns a result per list entry",
			ArgsSchema: `{"type":"object","required":["mem-blks"],"properties":{"mem-blks":{"type":"array","items":{"type":"object",` +
				`"required":["phys-index","online"],"properties":{"phys-index":{"type":"integer"},"online":{"type":"boolean"},"can-offline":{"type":"boolean"}}}}},"additionalProperties":false}`,
			Handler: s.setMemoryBlocks,
		},
		{
			Name:        "guest-get-memory-block-info",
			Description: "Get the size in bytes of a memory block",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getMemoryBlockInfo,
		},
	}
}

func (s *system) memoryDir() string { return s.sysPath("devices/system/memory") + "/" }

func (s *system) memoryBlockDir(index uint64) string {
	return s.memoryDir() + "memory" + strconv.FormatUint(index, 10) + "/"
}

type guestMemoryBlock struct {
	PhysIndex  uint64 `json:"phys-index"`
	Online     bool   `json:"online"`
	CanOffline *bool  `json:"can-offline,omitempty"`
}

// readSysfsFile reads up to size bytes of dir/name with qemu-ga's texts; the
// errno stays available to the caller, which treats ENOENT apart.
func readSysfsFile(dir, name string, size int) ([]byte, error) {
	f, err := os.Open(dir + name)
	if err != nil {
		return nil, &sysfsErr{sdk.Errorf("open sysfs file \"%s\": %s", name, strerror(err)), errnoOf(err)}
	}
	defer f.Close()
	buf := make([]byte, size)
	n, err := f.ReadAt(buf, 0)
	if n == 0 {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, &sysfsErr{sdk.Errorf("pread sysfs file \"%s\": unexpected EOF", name), 0}
		}
		return nil, &sysfsErr{sdk.Errorf("pread sysfs file \"%s\": %s", name, strerror(err)), errnoOf(err)}
	}
	return buf[:n], nil
}

type sysfsErr struct {
	err   error
	errno syscall.Errno
}

func (e *sysfsErr) Error() string { return e.err.Error() }
func (e *sysfsErr) Unwrap() error { return e.err }

// getMemoryBlocks walks the memoryN directories. A guest without them (no
// memory hotplug) gets an empty list, not an error.
func (s *system) getMemoryBlocks(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	dir := s.memoryDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return []guestMemoryBlock{}, nil
		}
		// The missing space is qemu-ga's.
		return nil, sdk.Errorf("Can't open directory\"%s\": %s", dir, strerror(err))
	}
	out := []guestMemoryBlock{}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "memory")
		if !ok || !e.IsDir() {
			continue
		}
		blk := guestMemoryBlock{PhysIndex: leadingUint(rest)}
		if err := s.readMemoryBlock(&blk); err != nil {
			return nil, err
		}
		out = append(out, blk)
	}
	if len(out) == 0 {
		return nil, sdk.Errorf("guest reported zero memory blocks!")
	}
	return out, nil
}

// leadingUint is strtoul(s, NULL, 10) for the digits s starts with.
func leadingUint(s string) uint64 {
	end := 0
	for end < len(s) && s[end] >= '0' && s[end] <= '9' {
		end++
	}
	v, _ := strconv.ParseUint(s[:end], 10, 64)
	return v
}

func (s *system) readMemoryBlock(blk *guestMemoryBlock) error {
	dir := s.memoryBlockDir(blk.PhysIndex)
	if _, err := os.Stat(dir); err != nil {
		return sdk.Errorf("open(\"%s\"): %s", dir, strerror(err))
	}
	canOffline := false
	blk.CanOffline = &canOffline
	state, err := readSysfsFile(dir, "state", 10)
	if err != nil {
		var se *sysfsErr
		if errors.As(err, &se) && se.errno == syscall.ENOENT {
			// Old kernels have no state file: online, for good.
			blk.Online = true
			return nil
		}
		return err
	}
	blk.Online = strings.HasPrefix(string(state), "online")
	removable, err := readSysfsFile(dir, "removable", 1)
	if err != nil {
		var se *sysfsErr
		if errors.As(err, &se) && se.errno == syscall.ENOENT {
			return nil
		}
		return err
	}
	canOffline = removable[0] != '0'
	return nil
}

type memoryBlockResponse struct {
	PhysIndex uint64 `json:"phys-index"`
	Response  string `json:"response"`
	ErrorCode *int   `json:"error-code,omitempty"`
}

// setMemoryBlocks reports each block's outcome instead of failing: qemu-ga's
// GuestMemoryBlockResponse, with the errno of a failure in error-code.
func (s *system) setMemoryBlocks(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		MemBlks []json.RawMessage `json:"mem-blks"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	if a.MemBlks == nil {
		return nil, sdk.Errorf("Parameter 'mem-blks' is missing")
	}
	blks, err := decodeObjectList[struct {
		PhysIndex  qapiUint64 `json:"phys-index"`
		Online     bool       `json:"online"`
		CanOffline *bool      `json:"can-offline"`
	}]("mem-blks", a.MemBlks)
	if err != nil {
		return nil, err
	}
	out := make([]memoryBlockResponse, 0, len(blks))
	for _, b := range blks {
		out = append(out, s.writeMemoryBlock(uint64(b.PhysIndex), b.Online))
	}
	return out, nil
}

// writeMemoryBlock follows qemu-ga's transfer_memory_block() in the
// block-to-system direction, including its quirks: an unchanged block is a
// "success" without error-code, and a block whose state file is missing
// keeps the "success" response but carries ENOENT.
func (s *system) writeMemoryBlock(index uint64, online bool) memoryBlockResponse {
	res := memoryBlockResponse{PhysIndex: index, Response: "success"}
	fail := func(response string, errno syscall.Errno) memoryBlockResponse {
		if response != "" {
			res.Response = response
		}
		code := int(errno)
		res.ErrorCode = &code
		return res
	}
	if _, err := os.Stat(s.memoryDir()); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fail("operation-not-supported", errnoOf(err))
		}
		return fail("", errnoOf(err))
	}
	dir := s.memoryBlockDir(index)
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fail("not-found", errnoOf(err))
		}
		return fail("operation-failed", errnoOf(err))
	}
	state, err := readSysfsFile(dir, "state", 10)
	if err != nil {
		var se *sysfsErr
		errors.As(err, &se)
		if se.errno == syscall.ENOENT {
			if !online {
				return fail("operation-not-supported", se.errno)
			}
			return fail("", se.errno)
		}
		return fail("operation-failed", se.errno)
	}
	if online == strings.HasPrefix(string(state), "online") {
		return res
	}
	newState := "offline"
	if online {
		newState = "online"
	}
	f, err := os.OpenFile(dir+"state", os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteAt([]byte(newState), 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		s.log.Warn("memory block state change failed", "block", index, "state", newState, "error", err)
		return fail("operation-failed", errnoOf(err))
	}
	return res
}

func (s *system) getMemoryBlockInfo(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	dir := s.memoryDir()
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		if err == nil {
			err = syscall.ENOTDIR
		}
		return nil, sdk.Errorf("open(\"%s\"): %s", dir, strerror(err))
	}
	buf, err := readSysfsFile(dir, "block_size_bytes", 20)
	if err != nil {
		return nil, err
	}
	size, _ := strconv.ParseUint(strings.TrimSpace(string(buf)), 16, 64)
	return map[string]uint64{"size": size}, nil
}

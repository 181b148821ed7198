package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

func (s *system) vcpuCommands() []sdk.Command {
	return []sdk.Command{
		{
			Name:        "guest-get-vcpus",
			Description: "List the logical processors, whether online and whether they can be offlined",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getVCPUs,
		},
		{
			Name:        "guest-set-vcpus",
			Description: "Online or offline logical processors; returns how many list entries were processed",
			ArgsSchema: `{"type":"object","required":["vcpus"],"properties":{"vcpus":{"type":"array","items":{"type":"object",` +
				`"required":["logical-id","online"],"properties":{"logical-id":{"type":"integer"},"online":{"type":"boolean"},"can-offline":{"type":"boolean"}}}}},"additionalProperties":false}`,
			Handler: s.setVCPUs,
		},
	}
}

type guestVCPU struct {
	LogicalID  int64 `json:"logical-id"`
	Online     bool  `json:"online"`
	CanOffline *bool `json:"can-offline,omitempty"`
}

func (s *system) cpuDir(id int64) string {
	// qemu-ga's messages quote the directory with its trailing slash.
	return s.sysPath("devices/system/cpu/cpu"+strconv.FormatInt(id, 10)) + "/"
}

// cpuID parses a "cpuN" entry of the cpu directory (cpufreq, cpuidle and
// the like are not CPUs).
func cpuID(name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, "cpu")
	if !ok || rest == "" || rest[0] < '0' || rest[0] > '9' {
		return 0, false
	}
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	id, err := strconv.ParseInt(rest[:end], 10, 64)
	return id, err == nil
}

// getVCPUs reads each CPU's online file; a CPU without one (often cpu0) is
// online and cannot be offlined. The list is sorted by id (qemu-ga leaves
// it in directory order, which the schema calls unspecified).
func (s *system) getVCPUs(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	dir := s.sysPath("devices/system/cpu")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, sdk.Errorf("failed to list entries: %s: %s", dir, strerror(err))
	}
	var ids []int64
	for _, e := range entries {
		if id, ok := cpuID(e.Name()); ok {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	out := make([]guestVCPU, 0, len(ids))
	for _, id := range ids {
		v := guestVCPU{LogicalID: id}
		if err := s.readVCPU(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		// There is no guest with zero VCPUs; qemu-ga asserts it.
		return nil, sdk.Errorf("guest reported zero VCPUs")
	}
	return out, nil
}

func (s *system) readVCPU(v *guestVCPU) error {
	dir := s.cpuDir(v.LogicalID)
	if _, err := os.Stat(dir); err != nil {
		return sdk.Errorf("open(\"%s\"): %s", dir, strerror(err))
	}
	data, err := os.ReadFile(dir + "online")
	canOffline := true
	switch {
	case errors.Is(err, os.ErrNotExist):
		v.Online, canOffline = true, false
	case err != nil:
		return sdk.Errorf("open(\"%s/%s\"): %s", dir, "online", strerror(err))
	case len(data) == 0:
		return sdk.Errorf("pread(\"%s/%s\"): unexpected EOF", dir, "online")
	default:
		v.Online = data[0] != '0'
	}
	v.CanOffline = &canOffline
	return nil
}

// setVCPUs processes the list in order and stops at the first failure:
// that failure is the command's error only when nothing was processed.
func (s *system) setVCPUs(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		VCPUs []json.RawMessage `json:"vcpus"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	if a.VCPUs == nil {
		return nil, sdk.Errorf("Parameter 'vcpus' is missing")
	}
	vcpus, err := decodeObjectList[struct {
		LogicalID  int64 `json:"logical-id"`
		Online     bool  `json:"online"`
		CanOffline *bool `json:"can-offline"`
	}]("vcpus", a.VCPUs)
	if err != nil {
		return nil, err
	}
	processed := 0
	for _, v := range vcpus {
		if err := s.writeVCPU(v.LogicalID, v.Online); err != nil {
			if processed == 0 {
				return nil, err
			}
			s.log.Warn("guest-set-vcpus stopped", "processed", processed, "error", err)
			break
		}
		processed++
	}
	return processed, nil
}

func (s *system) writeVCPU(id int64, online bool) error {
	dir := s.cpuDir(id)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		if err == nil {
			err = unix.ENOTDIR
		}
		return sdk.Errorf("open(\"%s\"): %s", dir, strerror(err))
	}
	f, err := os.OpenFile(dir+"online", os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		if !online {
			return sdk.Errorf("logical processor #%d can't be offlined", id)
		}
		return nil // cannot be offlined, so it is online already
	}
	if err != nil {
		return sdk.Errorf("open(\"%s/%s\"): %s", dir, "online", strerror(err))
	}
	defer f.Close()
	var b [1]byte
	n, err := f.ReadAt(b[:], 0)
	if n == 0 {
		if err == nil || errors.Is(err, io.EOF) {
			return sdk.Errorf("pread(\"%s/%s\"): unexpected EOF", dir, "online")
		}
		return sdk.Errorf("pread(\"%s/%s\"): %s", dir, "online", strerror(err))
	}
	if (b[0] != '0') == online {
		return nil
	}
	status := []byte{'0'}
	if online {
		status[0] = '1'
	}
	if _, err := f.WriteAt(status, 0); err != nil {
		return sdk.Errorf("pwrite(\"%s/%s\"): %s", dir, "online", strerror(err))
	}
	return nil
}

package main

import (
	"context"
	"encoding/binary"
	"os"
	"strconv"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func (s *system) statsCommands() []sdk.Command {
	return []sdk.Command{
		{
			Name:        "guest-get-load",
			Description: "Get the 1, 5 and 15 minute load averages",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getLoad,
		},
		{
			Name:        "guest-get-cpustats",
			Description: "Get per-CPU time statistics (milliseconds) from /proc/stat",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getCPUStats,
		},
		{
			Name:        "guest-get-diskstats",
			Description: "Get per-device I/O statistics from /proc/diskstats",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getDiskStats,
		},
	}
}

// getLoad reads loadavg as glibc's getloadavg() does.
func (s *system) getLoad(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(s.procPath("loadavg"))
	if err != nil {
		return nil, sdk.Errorf("cannot query load average: %s", strerror(err))
	}
	f := strings.Fields(string(data))
	var loads [3]float64
	for i := range loads {
		if i >= len(f) {
			return nil, sdk.Errorf("cannot query load average: %s", "Invalid argument")
		}
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return nil, sdk.Errorf("cannot query load average: %s", "Invalid argument")
		}
		loads[i] = v
	}
	return map[string]float64{"load1m": loads[0], "load5m": loads[1], "load15m": loads[2]}, nil
}

// clockTicks is sysconf(_SC_CLK_TCK): the kernel's USER_HZ, passed to every
// process in its auxiliary vector (AT_CLKTCK).
func (s *system) clockTicks() uint64 {
	const atClktck = 17
	if data, err := os.ReadFile(s.procPath("self/auxv")); err == nil {
		for i := 0; i+16 <= len(data); i += 16 {
			key := binary.NativeEndian.Uint64(data[i:])
			val := binary.NativeEndian.Uint64(data[i+8:])
			if key == atClktck && val > 0 {
				return val
			}
			if key == 0 {
				break
			}
		}
	}
	return 100
}

// scanUints parses the leading unsigned decimal fields of f like a run of
// sscanf %lu conversions: it stops at the first field that is not one.
func scanUints(f []string, max int) []uint64 {
	var out []uint64
	for _, s := range f {
		if len(out) == max {
			break
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			break
		}
		out = append(out, v)
	}
	return out
}

// getCPUStats reports the "cpuN" lines of /proc/stat in milliseconds, each
// optional member present when the kernel has the column (qemu-ga's
// GuestLinuxCpuStats, a union flattened under "type": "linux").
func (s *system) getCPUStats(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	path := s.procPath("stat")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, sdk.Errorf("open(\"%s\"): %s", path, strerror(err))
	}
	tck := s.clockTicks()
	ms := func(v uint64) uint64 { return v * 1000 / tck }
	out := []map[string]any{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		v := scanUints(f[1:], 10)
		if len(v) < 4 {
			s.log.Warn("parsing cpu stat failed, see \"man proc\"", "path", path)
			break
		}
		cpu, _ := strconv.Atoi(strings.TrimPrefix(f[0], "cpu"))
		st := map[string]any{
			"type": "linux", "cpu": cpu,
			"user": ms(v[0]), "nice": ms(v[1]), "system": ms(v[2]), "idle": ms(v[3]),
		}
		names := []string{"iowait", "irq", "softirq", "steal", "guest", "guestnice"}
		for i, name := range names {
			if 4+i < len(v) {
				st[name] = ms(v[4+i])
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// diskstatFields names the columns of /proc/diskstats after major, minor and
// name (Documentation/admin-guide/iostats.rst), with the width of the C
// variable qemu-ga reads each into (32-bit ones wrap).
var diskstatFields = [...]struct {
	name   string
	narrow bool
}{
	{"read-ios", false}, {"read-merges", false}, {"read-sectors", false}, {"read-ticks", false},
	{"write-ios", false}, {"write-merges", false}, {"write-sectors", false}, {"write-ticks", true},
	{"ios-pgr", true}, {"total-ticks", true}, {"weight-ticks", true},
	{"discard-ios", false}, {"discard-merges", false}, {"discard-sectors", false}, {"discard-ticks", true},
	{"flush-ios", false}, {"flush-ticks", true},
}

type diskStatsInfo struct {
	Name  string            `json:"name"`
	Major uint64            `json:"major"`
	Minor uint64            `json:"minor"`
	Stats map[string]uint64 `json:"stats"`
}

// getDiskStats parses /proc/diskstats. Lines with the 4 statistics of old
// kernels' partitions carry read/write ios and sectors only; the 11, 15 and
// 17 column forms add the rest in steps, as qemu-ga reads them.
func (s *system) getDiskStats(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	path := s.procPath("diskstats")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, sdk.Errorf("open(\"%s\"): %s", path, strerror(err))
	}
	out := []diskStatsInfo{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		maj, err1 := strconv.ParseUint(f[0], 10, 32)
		min, err2 := strconv.ParseUint(f[1], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		v := scanUints(f[3:], len(diskstatFields))
		n := 3 + len(v) // sscanf's count of conversions
		if n < 7 {
			continue
		}
		st := map[string]uint64{}
		if n == 7 {
			// Old partition lines: reads, read sectors, writes, write sectors.
			st["read-ios"], st["read-sectors"] = v[0], v[1]
			st["write-ios"], st["write-sectors"] = v[2], v[3]
		}
		put := func(from, to int) {
			for i := from; i < to; i++ {
				x := v[i]
				if diskstatFields[i].narrow {
					x = uint64(uint32(x))
				}
				st[diskstatFields[i].name] = x
			}
		}
		if n >= 14 {
			put(0, 11)
		}
		if n >= 18 {
			put(11, 15)
		}
		if n >= 20 {
			put(15, 17)
		}
		out = append(out, diskStatsInfo{Name: f[2], Major: maj, Minor: min, Stats: st})
	}
	return out, nil
}

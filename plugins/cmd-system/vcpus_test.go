package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

type vcpu struct {
	LogicalID  int64 `json:"logical-id"`
	Online     bool  `json:"online"`
	CanOffline *bool `json:"can-offline"`
}

// parseCPUList reads a kernel cpu list such as "0-3,8".
func parseCPUList(t *testing.T, s string) map[int64]bool {
	t.Helper()
	out := map[int64]bool{}
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		if part == "" {
			continue
		}
		lo, hi, found := strings.Cut(part, "-")
		a, err := strconv.ParseInt(lo, 10, 64)
		if err != nil {
			t.Fatalf("cpu list %q", s)
		}
		b := a
		if found {
			if b, err = strconv.ParseInt(hi, 10, 64); err != nil {
				t.Fatalf("cpu list %q", s)
			}
		}
		for i := a; i <= b; i++ {
			out[i] = true
		}
	}
	return out
}

func TestGetVCPUsOfThisMachine(t *testing.T) {
	online, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		t.Skipf("no sysfs cpu list: %v", err)
	}
	present, _ := os.ReadFile("/sys/devices/system/cpu/present")
	tp := newTestPlugin(t, nil)
	var cpus []vcpu
	tp.ok("guest-get-vcpus", "", &cpus)
	onlineSet := parseCPUList(t, string(online))
	presentSet := parseCPUList(t, string(present))
	if len(cpus) < len(presentSet) {
		t.Fatalf("%d vcpus, %d present", len(cpus), len(presentSet))
	}
	nOnline := 0
	for i, c := range cpus {
		if i > 0 && cpus[i-1].LogicalID >= c.LogicalID {
			t.Errorf("not sorted by id: %+v", cpus)
		}
		if c.CanOffline == nil {
			t.Errorf("cpu %d: can-offline missing", c.LogicalID)
		}
		if c.Online != onlineSet[c.LogicalID] {
			t.Errorf("cpu %d: online %v, the kernel's online list says %v", c.LogicalID, c.Online, onlineSet[c.LogicalID])
		}
		if c.Online {
			nOnline++
		}
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil && nOnline < set.Count() {
		t.Errorf("%d online vcpus but this process may run on %d", nOnline, set.Count())
	}
}

// fakeCPUs builds a sysfs stand-in: cpu0 without an online file (it cannot
// be offlined), cpu1 online, cpu2 offline, and entries that are not CPUs.
func fakeCPUs(t *testing.T) string {
	sys := t.TempDir()
	base := filepath.Join(sys, "devices", "system", "cpu")
	if err := os.MkdirAll(filepath.Join(base, "cpu0"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(base, "cpu1", "online"), "1\n", 0o644)
	writeFile(t, filepath.Join(base, "cpu2", "online"), "0\n", 0o644)
	writeFile(t, filepath.Join(base, "cpufreq", "boost"), "1\n", 0o644)
	writeFile(t, filepath.Join(base, "cpuidle", "current_driver"), "none\n", 0o644)
	writeFile(t, filepath.Join(base, "online"), "0-1\n", 0o644)
	return sys
}

func TestSetVCPUs(t *testing.T) {
	sys := fakeCPUs(t)
	tp := newTestPlugin(t, map[string]any{"sys_root": sys})
	var cpus []vcpu
	tp.ok("guest-get-vcpus", "", &cpus)
	want := []struct {
		id             int64
		online, canOff bool
	}{{0, true, false}, {1, true, true}, {2, false, true}}
	if len(cpus) != len(want) {
		t.Fatalf("vcpus %+v", cpus)
	}
	for i, w := range want {
		c := cpus[i]
		if c.LogicalID != w.id || c.Online != w.online || c.CanOffline == nil || *c.CanOffline != w.canOff {
			t.Errorf("vcpu %d: %+v, want %+v", i, c, w)
		}
	}

	onlineFile := func(id int) string {
		data, _ := os.ReadFile(filepath.Join(sys, "devices", "system", "cpu", "cpu"+strconv.Itoa(id), "online"))
		return string(data[:1])
	}
	var n int
	tp.ok("guest-set-vcpus", `{"vcpus":[{"logical-id":1,"online":false},{"logical-id":2,"online":true,"can-offline":false}]}`, &n)
	if n != 2 || onlineFile(1) != "0" || onlineFile(2) != "1" {
		t.Fatalf("set: %d processed, cpu1 %s cpu2 %s", n, onlineFile(1), onlineFile(2))
	}
	// Already in the requested state, or cpu0 staying online: nothing to do.
	tp.ok("guest-set-vcpus", `{"vcpus":[{"logical-id":1,"online":false},{"logical-id":0,"online":true}]}`, &n)
	if n != 2 {
		t.Fatalf("no-op set: %d", n)
	}
	tp.ok("guest-set-vcpus", `{"vcpus":[]}`, &n)
	if n != 0 {
		t.Fatalf("empty set: %d", n)
	}
	// A failure after the first entry ends the list quietly.
	tp.ok("guest-set-vcpus", `{"vcpus":[{"logical-id":1,"online":true},{"logical-id":99,"online":true},{"logical-id":2,"online":false}]}`, &n)
	if n != 1 || onlineFile(1) != "1" || onlineFile(2) != "1" {
		t.Fatalf("partial set: %d, cpu1 %s cpu2 %s", n, onlineFile(1), onlineFile(2))
	}
	cpuDir := filepath.Join(sys, "devices", "system", "cpu")
	tp.fails("guest-set-vcpus", `{"vcpus":[{"logical-id":99,"online":true}]}`, generic,
		`open("`+cpuDir+`/cpu99/"): No such file or directory`)
	tp.fails("guest-set-vcpus", `{"vcpus":[{"logical-id":0,"online":false}]}`, generic, "logical processor #0 can't be offlined")
}

func TestSetVCPUsArguments(t *testing.T) {
	tp := newTestPlugin(t, map[string]any{"sys_root": fakeCPUs(t)})
	for args, want := range map[string]string{
		`{}`:                           "Parameter 'vcpus' is missing",
		`{"vcpus":{}}`:                 "Invalid parameter type for 'vcpus', expected: array",
		`{"vcpus":[{"logical-id":0}]}`: "Parameter 'vcpus[0].online' is missing",
		`{"vcpus":[{"logical-id":0,"online":true},{"online":true}]}`: "Parameter 'vcpus[1].logical-id' is missing",
		`{"vcpus":[{"logical-id":0,"online":true,"x":1}]}`:           "Parameter 'vcpus[0].x' is unexpected",
		`{"vcpus":[{"logical-id":"a","online":true}]}`:               "Invalid parameter type for 'vcpus[0].logical-id', expected: integer",
		`{"vcpus":[1]}`: "Invalid parameter type for 'vcpus[0]', expected: object",
	} {
		tp.fails("guest-set-vcpus", args, generic, want)
	}
}

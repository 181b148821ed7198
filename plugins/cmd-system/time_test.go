package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestGetTime(t *testing.T) {
	tp := newTestPlugin(t, nil)
	before := time.Now().UnixNano()
	var ns int64
	tp.ok("guest-get-time", "", &ns)
	after := time.Now().UnixNano()
	// Microsecond resolution, as qemu-ga's g_get_real_time() * 1000.
	if ns < before-1000 || ns > after || ns%1000 != 0 {
		t.Fatalf("guest-get-time %d, not within [%d, %d] in whole microseconds", ns, before, after)
	}
	tp.fails("guest-get-time", `{"x":1}`, generic, "Parameter 'x' is unexpected")
}

// setTimePlugin swaps the clock setter for a recorder: the tests never set
// the clock of the machine they run on.
func setTimePlugin(t *testing.T, hwclock string, setErr error) (*testPlugin, *[]unix.Timeval) {
	tp := newTestPlugin(t, map[string]any{"hwclock_path": hwclock})
	var calls []unix.Timeval
	tp.sys.settimeofday = func(tv *unix.Timeval) error {
		calls = append(calls, *tv)
		return setErr
	}
	return tp, &calls
}

func TestSetTime(t *testing.T) {
	dir := t.TempDir()
	hwclock, args, _ := recorder(t, dir, "hwclock", 0, "")
	tp, calls := setTimePlugin(t, hwclock, nil)

	const ns = 1700000000123456789
	tp.ok("guest-set-time", `{"time":`+strconv.FormatInt(ns, 10)+`}`, nil)
	if len(*calls) != 1 || (*calls)[0].Sec != 1700000000 || (*calls)[0].Usec != 123456 {
		t.Fatalf("settimeofday calls %+v, want one with 1700000000.123456", *calls)
	}
	if got := readLines(t, args); !equalStrings(got, []string{"-w"}) {
		t.Fatalf("hwclock after setting the time got %q, want -w", got)
	}

	// Without a time: the system clock comes from the RTC.
	tp.ok("guest-set-time", "", nil)
	if len(*calls) != 1 {
		t.Fatalf("settimeofday called without a time: %+v", *calls)
	}
	if got := readLines(t, args); !equalStrings(got, []string{"-s"}) {
		t.Fatalf("hwclock without a time got %q, want -s", got)
	}
}

func TestSetTimeErrors(t *testing.T) {
	dir := t.TempDir()
	hwclock, args, _ := recorder(t, dir, "hwclock", 0, "")
	tp, calls := setTimePlugin(t, hwclock, nil)
	for _, bad := range []string{"-1000000000000000000", "4102444800000000000", "-100000000000000000"} {
		tp.fails("guest-set-time", `{"time":`+bad+`}`, generic, "Invalid time")
	}
	tp.fails("guest-set-time", `{"time":"x"}`, generic, "Invalid parameter type for 'time', expected: integer")
	tp.fails("guest-set-time", `{"time":1.5}`, generic, "Invalid parameter type for 'time', expected: integer")
	if len(*calls) != 0 || readLines(t, args) != nil {
		t.Fatalf("an invalid time reached the clock (%v) or hwclock (%q)", *calls, readLines(t, args))
	}

	tp, _ = setTimePlugin(t, hwclock, unix.EPERM)
	tp.fails("guest-set-time", `{"time":1700000000000000000}`, generic, "Failed to set time to guest: Operation not permitted")
	if readLines(t, args) != nil {
		t.Fatal("hwclock ran although the clock was not set")
	}

	failing, _, _ := recorder(t, dir, "hwclock-bad", 1, "hwclock: cannot access the Hardware Clock")
	tp, _ = setTimePlugin(t, failing, nil)
	tp.fails("guest-set-time", "", generic, "child process has failed to set hardware clock to system time: hwclock: cannot access the Hardware Clock")
}

func TestGetTimezoneFromTree(t *testing.T) {
	zoneFile := "/usr/share/zoneinfo/Europe/Paris"
	data, err := os.ReadFile(zoneFile)
	if err != nil {
		t.Skipf("tzdata not installed: %v", err)
	}
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "etc", "localtime"), string(data), 0o644)
	tp := newTestPlugin(t, map[string]any{"root": root})
	var tz struct {
		Zone   *string `json:"zone"`
		Offset *int    `json:"offset"`
	}
	tp.ok("guest-get-timezone", "", &tz)
	loc, err := time.LoadLocationFromTZData("Paris", data)
	if err != nil {
		t.Fatal(err)
	}
	wantZone, wantOffset := time.Now().In(loc).Zone()
	if tz.Zone == nil || tz.Offset == nil || *tz.Zone != wantZone || *tz.Offset != wantOffset {
		t.Fatalf("timezone %+v, want %s %d", tz, wantZone, wantOffset)
	}
	if *tz.Zone != "CET" && *tz.Zone != "CEST" {
		t.Fatalf("zone %q for Paris", *tz.Zone)
	}

	// No /etc/localtime: UTC, as glib.
	tp = newTestPlugin(t, map[string]any{"root": t.TempDir()})
	var utc map[string]any
	tp.ok("guest-get-timezone", "", &utc)
	if utc["zone"] != "UTC" || utc["offset"] != float64(0) {
		t.Fatalf("without localtime: %v", utc)
	}
}

func TestGetTimezoneMatchesDate(t *testing.T) {
	date := requireTool(t, "date")
	tp := newTestPlugin(t, nil)
	var tz struct {
		Zone   string `json:"zone"`
		Offset int    `json:"offset"`
	}
	tp.ok("guest-get-timezone", "", &tz)
	// date(1) through libc is an independent reading of the same zone.
	out, err := exec.Command(date, "+%Z %z").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("date said %q", out)
	}
	sign := 1
	if f[1][0] == '-' {
		sign = -1
	}
	hh, _ := strconv.Atoi(f[1][1:3])
	mm, _ := strconv.Atoi(f[1][3:5])
	if tz.Zone != f[0] || tz.Offset != sign*(hh*3600+mm*60) {
		t.Fatalf("guest-get-timezone %+v, date says %s", tz, out)
	}
}

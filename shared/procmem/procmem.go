// Package procmem gives an idle agent process's memory back to the system:
// the garbage collector's free pages, and the pages of its own executable
// that start-up or a burst brought in and that idleness does not need.
//
// A Go binary is mapped from its file, and the kernel's fault-around and
// read-ahead make most of a 13 MB binary resident after start-up (about
// 11 of a plugin's 15 MiB are such pages). They are clean copies of the
// file: the kernel would drop them under memory pressure, and a page
// touched again comes back from the page cache with a minor fault. Until
// then they count in the process's RSS and PSS. DropExecutablePages lets
// them go at the moments a process knows it is idle (after start-up, after
// a transfer, after a plugin left), so its resident size is what it uses.
package procmem

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ReturnIdle collects garbage, returns free heap pages to the system and
// drops the clean pages of the executable (see the package comment).
func ReturnIdle() {
	runtime.GC()
	debug.FreeOSMemory()
	_, _ = DropExecutablePages()
}

// mapping is one line of /proc/self/smaps with the counters needed here.
type mapping struct {
	start, end uintptr
	perms      string
	path       string
	anonymous  int64 // kB of pages copied on write: never dropped
}

// DropExecutablePages advises the kernel that the process no longer needs
// the resident pages of its executable's read-only mappings (text and read-
// only data) and returns how many bytes of mappings it advised. Only
// mappings that hold no private copy of a page (Anonymous: 0 kB) qualify:
// MADV_DONTNEED on them loses nothing, a later access reads the file's
// page again, and a page written since the mapping (a relocation) would
// show as anonymous and keep its mapping out.
func DropExecutablePages() (int64, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("procmem: %w", err)
	}
	maps, err := readSmaps(exe)
	if err != nil {
		return 0, err
	}
	var advised int64
	for _, m := range maps {
		if strings.Contains(m.perms, "w") || m.anonymous != 0 {
			continue
		}
		// Syscall, not unix.Madvise: the range is not a Go slice.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_DONTNEED); errno != 0 {
			return advised, fmt.Errorf("procmem: madvise %x-%x: %w", m.start, m.end, errno)
		}
		advised += int64(m.end - m.start)
	}
	return advised, nil
}

// readSmaps returns the mappings of path in /proc/self/smaps.
func readSmaps(path string) ([]mapping, error) {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return nil, fmt.Errorf("procmem: %w", err)
	}
	var out []mapping
	var cur *mapping
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if strings.Contains(f[0], "-") && len(f) >= 5 {
			cur = nil
			if len(f) < 6 || f[5] != path {
				continue
			}
			lo, hi, ok := strings.Cut(f[0], "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if !ok || err1 != nil || err2 != nil {
				return nil, fmt.Errorf("procmem: smaps line %q", line)
			}
			out = append(out, mapping{start: uintptr(start), end: uintptr(end), perms: f[1], path: f[5]})
			cur = &out[len(out)-1]
			continue
		}
		if cur != nil && f[0] == "Anonymous:" && len(f) >= 2 {
			cur.anonymous, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return out, sc.Err()
}

package procmem

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// exeRSS sums the resident kB of the test binary's own mappings.
func exeRSS(t *testing.T) (rss int64) {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if strings.Contains(f[0], "-") && len(f) >= 5 {
			in = len(f) >= 6 && f[5] == exe
			continue
		}
		if in && f[0] == "Rss:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			rss += n
		}
	}
	return rss
}

// The executable's clean pages leave the resident set and come back when
// used: the process goes on running its code and reading its data.
func TestDropExecutablePages(t *testing.T) {
	before := exeRSS(t)
	advised, err := DropExecutablePages()
	if err != nil {
		t.Fatal(err)
	}
	after := exeRSS(t)
	t.Logf("executable resident: %d kB before, %d kB after (%d kB of mappings advised)", before, after, advised>>10)
	if advised == 0 || after >= before {
		t.Fatalf("nothing dropped: %d kB before, %d kB after", before, after)
	}
	// Code and read-only data still work: format, parse, allocate, collect.
	for i := 0; i < 1000; i++ {
		if s := strconv.Itoa(i); strings.Repeat(s, 2) != s+s {
			t.Fatal("strings broke")
		}
	}
	ReturnIdle()
	if exeRSS(t) == 0 {
		t.Fatal("no page came back although code ran")
	}
}

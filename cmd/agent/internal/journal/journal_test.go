package journal

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

func newLogger(w *bytes.Buffer, disableTime bool) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name: "guest-agent", Level: hclog.Trace, Output: NewWriter(w), DisableTime: disableTime,
	})
}

func TestLevelsBecomePriorities(t *testing.T) {
	for _, disableTime := range []bool{true, false} {
		var buf bytes.Buffer
		l := newLogger(&buf, disableTime)
		l.Trace("t")
		l.Debug("d")
		l.Info("i", "plugin", "cmd-exec", "pid", 42)
		l.Warn("w")
		l.Error("e", "error", "boom")
		want := "<7>[TRACE] guest-agent: t\n" +
			"<7>[DEBUG] guest-agent: d\n" +
			"<6>[INFO]  guest-agent: i: plugin=cmd-exec pid=42\n" +
			"<4>[WARN]  guest-agent: w\n" +
			"<3>[ERROR] guest-agent: e: error=boom\n"
		if got := buf.String(); got != want {
			t.Errorf("DisableTime=%v: got\n%s\nwant\n%s", disableTime, got, want)
		}
	}
}

// go-plugin forwards a plugin's record with the plugin's time as the last
// pair of the first line: the journal has its own.
func TestForwardedPluginTimestampStripped(t *testing.T) {
	var buf bytes.Buffer
	l := newLogger(&buf, true).Named("parser-json")
	l.Info("serving a handed-over listener", "@module", "parser-json", "channel", "qga", "timestamp", "2026-12-02T06:09:15.866Z")
	l.Info("keep", "timestamp", "yesterday", "other", 1)
	l.Info("keep too", "timestamp", "2026-12-02T06:09:15.866Z", "after", 1)
	want := "<6>[INFO]  guest-agent.parser-json: serving a handed-over listener: @module=parser-json channel=qga\n" +
		"<6>[INFO]  guest-agent.parser-json: keep: timestamp=yesterday other=1\n" +
		"<6>[INFO]  guest-agent.parser-json: keep too: timestamp=2026-12-02T06:09:15.866Z after=1\n"
	if got := buf.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// A value of several lines is written on lines of its own: each carries the
// record's priority, or the journal would file it as info.
func TestEveryLineOfARecordPrefixed(t *testing.T) {
	var buf bytes.Buffer
	newLogger(&buf, true).Error("plugin panicked", "stack", "goroutine 1 [running]:\nmain.main()\n\t/src/main.go:3", "timestamp", "2026-12-02T06:09:15.866Z")
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) < 4 {
		t.Fatalf("want the value's lines on lines of their own, got %q", buf.String())
	}
	for _, line := range lines {
		if !strings.HasPrefix(line, "<3>") {
			t.Errorf("line without the error priority: %q", line)
		}
	}
	if strings.Contains(buf.String(), "timestamp=") {
		t.Errorf("forwarded timestamp kept: %q", buf.String())
	}
}

// plainWriter hides LevelWrite: the Writer then reads hclog's level tag.
type plainWriter struct{ w *Writer }

func (p plainWriter) Write(b []byte) (int, error) { return p.w.Write(b) }

func TestWriteReadsTheLevelTag(t *testing.T) {
	var buf bytes.Buffer
	l := hclog.New(&hclog.LoggerOptions{Name: "x", Level: hclog.Trace, Output: plainWriter{NewWriter(&buf)}})
	l.Trace("t")
	l.Debug("d")
	l.Info("i")
	l.Warn("w")
	l.Error("e")
	want := "<7>[TRACE] x: t\n<7>[DEBUG] x: d\n<6>[INFO]  x: i\n<4>[WARN]  x: w\n<3>[ERROR] x: e\n"
	if got := buf.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	buf.Reset()
	fmt.Fprint(NewWriter(&buf), "untagged text\n")
	if got := buf.String(); got != "<6>untagged text\n" {
		t.Errorf("untagged: got %q", got)
	}
}

// Records logged at once from many goroutines come out whole, one write
// each, never interleaved.
func TestConcurrentRecordsStayWhole(t *testing.T) {
	var buf bytes.Buffer
	l := newLogger(&buf, true)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				l.Warn("w", "g", g, "i", i, "multi", "a\nb")
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 8*200*4 {
		t.Fatalf("%d lines, want %d", len(lines), 8*200*4)
	}
	for i := 0; i < len(lines); i += 4 {
		if !strings.HasPrefix(lines[i], "<4>[WARN]  guest-agent: w: g=") || lines[i+1] != "<4>  multi=" ||
			lines[i+2] != "<4>  | a" || lines[i+3] != "<4>  | b" {
			t.Fatalf("record at line %d torn: %q", i, lines[i:i+4])
		}
	}
}

func TestConnectedComparesDeviceAndInode(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other, err := os.Create(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	env := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	if !matches(env, f) {
		t.Errorf("JOURNAL_STREAM=%s not matched by the file it names", env)
	}
	if matches(env, other) {
		t.Errorf("JOURNAL_STREAM=%s matched by another file (stderr redirected away from the journal)", env)
	}
	for _, bad := range []string{"", "12", "a:b", fmt.Sprintf("%d:", st.Dev), fmt.Sprintf(":%d", st.Ino)} {
		if matches(bad, f) {
			t.Errorf("JOURNAL_STREAM=%q matched", bad)
		}
	}
	t.Setenv("JOURNAL_STREAM", env)
	if !Connected(f) {
		t.Error("Connected: false with JOURNAL_STREAM naming the file")
	}
}
